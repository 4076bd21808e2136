"""Deletes Azure Container Registry images whose Azure DevOps pull request is closed."""

__version__ = "0.1.0"
