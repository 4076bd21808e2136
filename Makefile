# The README's commands. Every target installs what it needs first, so a fresh clone works.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
CHECKOV_STAMP := .venv-checkov/.installed

.PHONY: setup demo test lint typecheck security unit integration infra-check bench clean

$(VENV_STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# checkov pins an older pycep-parser than the project, so it has a virtual environment of its own.
$(CHECKOV_STAMP): infra/checkov-constraints.txt
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet --disable-pip-version-check -c infra/checkov-constraints.txt checkov
	touch $@

setup: $(VENV_STAMP) $(NODE_STAMP) $(CHECKOV_STAMP)

## demo: start the emulators with a demo registry and run the cleanup against them, end to end
demo: $(VENV_STAMP)
	$(PY) scripts/demo.py

## test: lint, type-check, security scan, every test (unit, integration, Function App, infra)
test: setup lint typecheck security
	$(PY) -m pytest

lint: $(VENV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV_STAMP)
	$(VENV)/bin/mypy

security: $(VENV_STAMP)
	$(VENV)/bin/bandit -q -c pyproject.toml -r cleanup function_app.py

unit: $(VENV_STAMP)
	$(PY) -m pytest tests/unit

integration: setup
	$(PY) -m pytest -m integration

infra-check: $(VENV_STAMP) $(CHECKOV_STAMP)
	$(PY) -m pytest -m infra

## bench: the benchmark harness (product beside the baseline, against the emulators)
bench: $(VENV_STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .venv-checkov node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
