"""`python -m cleanup` as a pipeline runs it: a real process, settings from its environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulators import Emulators
from emulators.scenario import demo_scenario
from tests.conftest import StartEmulators

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLEAN_ENVIRONMENT = {
    name: value
    for name, value in os.environ.items()
    if not name.startswith(("CLEANUP_", "AZURE_", "IDENTITY_", "MSI_"))
}


def cleanup(emulators: Emulators, *arguments: str, **settings: str | None):
    environment = {**CLEAN_ENVIRONMENT, **emulators.env}
    for name, value in settings.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return python("-m", "cleanup", *arguments, environment=environment)


def python(*arguments: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and command line
        [sys.executable, *arguments],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def demo(start_emulators: StartEmulators) -> Emulators:
    return start_emulators(demo_scenario())


def test_json_report_has_the_contract_shape(demo: Emulators):
    """--json prints the contract's report on stdout and exits 0 when everything succeeded."""
    completed = cleanup(demo, "--json")
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["schemaVersion"] == 1
    assert set(report) >= {
        "runId", "dryRun", "startedAt", "finishedAt", "registry", "summary", "actions", "errors"
    }  # fmt: skip
    assert set(report["summary"]) >= {
        "repositories", "tagsScanned", "pullRequestTags", "pullRequests",
        "deleted", "kept", "failed", "manifestsDeleted",
    }  # fmt: skip
    first = report["actions"][0]
    assert set(first) >= {
        "repository", "tag", "digest", "pullRequest", "pullRequestStatus", "action", "reason"
    }  # fmt: skip
    assert report["dryRun"] is False
    assert report["summary"]["deleted"] == 5


def test_dry_run_flag_overrides_the_setting(demo: Emulators):
    """--dry-run wins over CLEANUP_DRY_RUN=false, and nothing is deleted."""
    completed = cleanup(demo, "--dry-run", "--json", CLEANUP_DRY_RUN="false")
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["dryRun"] is True
    assert demo.log.count(service="acr", method="DELETE") == 0


def test_readable_report_goes_to_stdout_and_logs_to_stderr(demo: Emulators):
    """Without --json the report is a table on stdout; log lines stay on stderr."""
    completed = cleanup(demo, "--dry-run")
    assert "REPOSITORY" in completed.stdout
    assert "would delete" in completed.stdout
    assert "INFO" not in completed.stdout
    assert "INFO" in completed.stderr


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("CLEANUP_MAX_DELETIONS", "-1"),
        ("CLEANUP_TAG_PATTERN", r"^pr(\d+)$"),
        ("CLEANUP_REGISTRY", "http://contoso.azurecr.io"),
        ("CLEANUP_UNKNOWN_PR", "maybe"),
        ("CLEANUP_DRYRUN", "true"),
    ],
)
def test_bad_setting_exits_2_naming_it_before_any_request(demo: Emulators, setting, value):
    """A bad value exits 2 with a message naming the setting; no service is contacted."""
    completed = cleanup(demo, **{setting: value})
    assert completed.returncode == 2
    assert setting in completed.stderr
    assert completed.stdout == ""
    assert demo.log.entries() == []


def test_missing_required_setting_exits_2(demo: Emulators):
    """Without CLEANUP_REGISTRY the command says which setting is missing."""
    completed = cleanup(demo, CLEANUP_REGISTRY=None)
    assert completed.returncode == 2
    assert "CLEANUP_REGISTRY" in completed.stderr


def test_refused_credential_exits_3_without_leaking_it(demo: Emulators):
    """A PAT Azure DevOps refuses exits 3; the PAT is in no output."""
    secret = "pat-that-must-never-print-0123456789"
    completed = cleanup(demo, "--json", AZURE_DEVOPS_PAT=secret)
    assert completed.returncode == 3
    assert secret not in completed.stdout + completed.stderr
    assert json.loads(completed.stdout)["summary"]["deleted"] == 0
    assert demo.log.count(service="acr", method="DELETE") == 0


def test_unknown_argument_exits_2(demo: Emulators):
    """An argument the command does not know is a usage error, exit 2."""
    completed = cleanup(demo, "--delete-everything")
    assert completed.returncode == 2
    assert "--delete-everything" in completed.stderr


def test_the_quick_exit_loses_nothing_written():
    """exit_now skips the interpreter's teardown, not buffered output or the exit code."""
    script = (
        "import sys; from cleanup.__main__ import exit_now; "
        "[sys.stdout.write('x' * 10) for _ in range(20_001)]; exit_now(3)"
    )
    buffered = {k: v for k, v in CLEAN_ENVIRONMENT.items() if k != "PYTHONUNBUFFERED"}
    done = python("-c", script, environment=buffered)
    assert done.returncode == 3
    assert done.stdout == "x" * 200_010


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`python -m cleanup --json | head`: the reader goes; the command line ends quietly, with
    the run's exit code."""
    script = (
        "from cleanup.__main__ import exit_now, write_out; "
        "write_out(['x' * 10] * 20_001); exit_now(3)"
    )
    buffered = {k: v for k, v in CLEAN_ENVIRONMENT.items() if k != "PYTHONUNBUFFERED"}
    child = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script],
        env=buffered,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    child.stdout.close()  # the reader leaves before reading anything
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 3
    assert b"Traceback" not in stderr
    assert b"BrokenPipeError" not in stderr
