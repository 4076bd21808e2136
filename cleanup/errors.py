"""Errors that cross module boundaries. Messages name the problem and never carry a secret."""

from __future__ import annotations


class CleanupError(Exception):
    """Base of the product's own errors."""

    exit_code = 1


class ConfigurationError(CleanupError):
    """A setting or argument is invalid; nothing was contacted (exit 2)."""

    exit_code = 2


class StopRunError(CleanupError):
    """The run must stop before deleting anything (exit 3)."""

    exit_code = 3


class AuthenticationError(StopRunError):
    """A service refused the credential (401/403, Azure DevOps' sign-in page, no token)."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service} refused the credential: {detail}")
        self.service = service


class ServiceUnreachableError(StopRunError):
    """A service could not be reached at all (DNS, TLS, connection refused, retries exhausted)."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service} could not be reached: {detail}")
        self.service = service


class ProjectNotFoundError(StopRunError):
    """AZURE_DEVOPS_PROJECT names a project Azure DevOps does not have."""

    def __init__(self, project: str) -> None:
        super().__init__(
            f"AZURE_DEVOPS_PROJECT={project!r}: Azure DevOps has no such project "
            "(or the credential cannot see it)"
        )
        self.project = project


class SafetyCapError(StopRunError):
    """The plan deletes more tags than CLEANUP_MAX_DELETIONS allows."""

    def __init__(self, planned: int, cap: int) -> None:
        super().__init__(
            f"the plan would delete {planned} tags, more than CLEANUP_MAX_DELETIONS={cap}; "
            "nothing was deleted"
        )
        self.planned = planned
        self.cap = cap


class RegistryOperationError(CleanupError):
    """One registry operation failed after retries; the run goes on without it."""


class LockedError(RegistryOperationError):
    """The registry refused a deletion because the tag or manifest is locked."""
