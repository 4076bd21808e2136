"""Helpers of the reliability suite: emulators with the managed identity in the environment,
fast adapter tuning, registry snapshots and the real command line as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cleanup.engine import Tuning
from cleanup.retry import RetryPolicy
from cleanup.settings import Settings, load_settings
from emulators import Emulators
from emulators.scenario import Scenario
from tests.conftest import StartEmulators

ROOT = Path(__file__).resolve().parents[2]

FAST = Tuning(
    registry_timeout_s=0.5,
    devops_timeout_s=0.5,
    registry_backoff_s=0.01,
    registry_backoff_max_s=0.02,
    devops_retry=RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05, total_s=20.0),
)
"""Short timeouts and backoffs: a fault costs milliseconds, not the production seconds."""

Emulate = Callable[..., Emulators]


@pytest.fixture
def emulate(monkeypatch: pytest.MonkeyPatch, start_emulators: StartEmulators) -> Emulate:
    """`emulate(scenario, **Emulators_kwargs)`; azure-identity finds the managed identity
    endpoint in the process environment, so it is set there."""

    def start(scenario: Scenario | None = None, **kwargs: Any) -> Emulators:
        emulators = start_emulators(scenario, **kwargs)
        for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
            monkeypatch.setenv(name, emulators.env[name])
        return emulators

    return start


def settings_for(emulators: Emulators, **overrides: str | None) -> Settings:
    environment = dict(emulators.env)
    for name, value in overrides.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return load_settings(environment)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a registry holds: tags (repository, tag) -> digest, manifests, locked items."""

    tags: Mapping[tuple[str, str], str]
    manifests: frozenset[tuple[str, str]]
    locked_tags: frozenset[tuple[str, str]]
    locked_manifests: frozenset[tuple[str, str]]


def snapshot(emulators: Emulators) -> Snapshot:
    state = emulators.acr.state

    def read() -> Snapshot:
        tags: dict[tuple[str, str], str] = {}
        manifests, locked_tags, locked_manifests = set(), set(), set()
        for name, repo in state.repositories.items():
            for tag, record in repo.tags.items():
                tags[(name, tag)] = record.digest
                if not record.delete_enabled:
                    locked_tags.add((name, tag))
            for digest, manifest in repo.manifests.items():
                manifests.add((name, digest))
                if not manifest.delete_enabled:
                    locked_manifests.add((name, digest))
        return Snapshot(
            tags, frozenset(manifests), frozenset(locked_tags), frozenset(locked_manifests)
        )

    result = emulators.acr.call(read)
    assert isinstance(result, Snapshot)
    return result


def cli_environment(emulators: Emulators, **overrides: str | None) -> dict[str, str]:
    """The environment of a `python -m cleanup` subprocess: the emulators' and nothing else
    of ours (no CLEANUP_ variable of the test process leaks in)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CLEANUP_", "AZURE_", "IDENTITY_", "MSI_"))
    }
    env.update(emulators.env)
    env["PYTHONPATH"] = str(ROOT)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_cli(
    env: Mapping[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m cleanup ARGS` as a user runs it; stdout, stderr and the exit status."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "cleanup", *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
