"""Fixtures of the infra tests: every template parsed once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra.bicep import INFRA, Template, bicep_files, parse_all


@pytest.fixture(scope="session")
def parsed() -> dict[Path, Template | Exception]:
    """Every .bicep file under infra/, parsed in one process: pycep compiles its grammar once."""
    return parse_all(bicep_files())


@pytest.fixture(scope="session")
def templates(parsed: dict[Path, Template | Exception]) -> dict[str, Template]:
    """The parsed templates by path relative to infra/ (`main.bicep`, `modules/storage.bicep`)."""
    broken = [str(path) for path, result in parsed.items() if isinstance(result, Exception)]
    if broken:
        pytest.fail(f"cannot cross-check templates that do not parse: {broken}")
    return {
        path.relative_to(INFRA).as_posix(): result
        for path, result in parsed.items()
        if not isinstance(result, Exception)
    }
