"""The run store's pure rules: run ids, blob names, messages, storage settings, dead runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cleanup.errors import ConfigurationError
from cleanup.report import Report, ReportError
from cleanup.runs import (
    MAY_HAVE_DELETED,
    QUEUED_TIMEOUT,
    LockState,
    RunMessage,
    RunRecord,
    RunState,
    StorageConfig,
    Trigger,
    _lock_blob,
    _record_blob,
    effective,
    is_run_id,
    new_run_id,
    state_for_exit_code,
)
from cleanup.telemetry import OUTCOMES, outcome_for_exit_code

ROOT = Path(__file__).resolve().parents[2]

NOW = datetime(2026, 12, 4, 2, 0, tzinfo=UTC)


def record(state: RunState, *, queued_at: datetime = NOW, run_id: str | None = None) -> RunRecord:
    return RunRecord(
        run_id=run_id or "20261204T020000Z-1a2b3c4d5e6f",
        state=state,
        trigger=Trigger.HTTP,
        dry_run=False,
        registry="contoso.azurecr.io",
        queued_at=queued_at,
    )


def test_run_ids_have_one_shape():
    """A new run id is its UTC second and 12 hex digits, and only that shape is a run id."""
    run_id = new_run_id(NOW)
    assert run_id.startswith("20261204T020000Z-")
    assert is_run_id(run_id)
    for bad in ("", "x", run_id + "/", "../" + run_id, run_id.upper(), run_id + "\n"):
        assert not is_run_id(bad)


def test_record_names_list_newest_first():
    """Record blob names sort newest first."""
    older = _record_blob(new_run_id(NOW))
    newer = _record_blob(new_run_id(NOW + timedelta(seconds=1)))
    much_newer = _record_blob(new_run_id(NOW + timedelta(days=400)))
    assert sorted([older, newer, much_newer]) == [much_newer, newer, older]


@pytest.mark.parametrize(
    ("registry_url", "blob"),
    [
        ("https://contoso.azurecr.io", "locks/contoso.azurecr.io"),
        ("https://Contoso.AzureCR.io", "locks/contoso.azurecr.io"),
        ("https://127.0.0.1:8443", "locks/127.0.0.1_8443"),
    ],
)
def test_the_lock_is_named_after_the_registry(registry_url, blob):
    """One lock blob per registry host, case-insensitive, safe characters only."""
    assert _lock_blob(registry_url) == blob


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"runId": "x", "dryRun": true}',
        '{"runId": "20261204T020000Z-1a2b3c4d5e6f"}',
        '{"runId": "20261204T020000Z-1a2b3c4d5e6f", "dryRun": "true"}',
    ],
)
def test_a_malformed_run_message_is_refused(text):
    """A run message is exactly a run id and a boolean dryRun."""
    with pytest.raises(ValueError, match="run message"):
        RunMessage.parse(text)


def test_a_run_message_round_trips():
    """to_json and parse agree."""
    message = RunMessage(run_id="20261204T020000Z-1a2b3c4d5e6f", dry_run=True)
    assert RunMessage.parse(message.to_json()) == message


@pytest.mark.parametrize(
    ("code", "state"), [(0, "succeeded"), (1, "partial"), (2, "failed"), (3, "failed")]
)
def test_exit_codes_map_to_states(code, state):
    """0 succeeded, 1 partial, anything else failed."""
    assert state_for_exit_code(code).value == state


def test_a_running_run_holding_the_lease_is_running():
    """Running, with the lock's lease held and naming it: running."""
    lock = LockState(run_id="20261204T020000Z-1a2b3c4d5e6f", leased=True, etag="e")
    assert effective(record(RunState.RUNNING), lock, NOW).state is RunState.RUNNING


@pytest.mark.parametrize(
    "lock",
    [
        None,
        LockState(run_id="20261204T020000Z-1a2b3c4d5e6f", leased=False, etag="e"),
        LockState(run_id="20261204T030000Z-000000000000", leased=True, etag="e"),
    ],
)
def test_a_running_run_without_the_lease_did_not_finish(lock):
    """Running without holding the lease (expired, or another run has it): failed."""
    seen = effective(record(RunState.RUNNING), lock, NOW)
    assert seen.state is RunState.FAILED
    assert (seen.error or "").startswith("did not finish")
    assert MAY_HAVE_DELETED in (seen.error or "")


def test_a_queued_run_fails_only_after_the_timeout():
    """Queued up to QUEUED_TIMEOUT is queued; later it is failed, "did not start"."""
    queued = record(RunState.QUEUED)
    assert effective(queued, None, NOW + QUEUED_TIMEOUT).state is RunState.QUEUED
    late = effective(queued, None, NOW + QUEUED_TIMEOUT + timedelta(seconds=1))
    assert late.state is RunState.FAILED
    assert (late.error or "").startswith("did not start")


@pytest.mark.parametrize("state", [RunState.SUCCEEDED, RunState.PARTIAL, RunState.FAILED])
def test_finished_runs_stay_as_they_are(state):
    """A finished record is shown as stored, lock or not."""
    assert effective(record(state), None, NOW + timedelta(days=9)).state is state


def test_storage_from_a_connection_string():
    """AzureWebJobsStorage, when set, is the connection string (Azurite's shorthand too)."""
    config = StorageConfig.from_environ({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert config.connection_string == "UseDevelopmentStorage=true"
    assert "UseDevelopmentStorage" not in repr(config)


def test_identity_based_storage_as_infra_sets_it():
    """The __blobServiceUri/__queueServiceUri/__credential/__clientId settings the host reads."""
    config = StorageConfig.from_environ(
        {
            "AzureWebJobsStorage__blobServiceUri": "https://st.blob.core.windows.net/",
            "AzureWebJobsStorage__queueServiceUri": "https://st.queue.core.windows.net/",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000001",
        }
    )
    assert config == StorageConfig(
        blob_service_uri="https://st.blob.core.windows.net/",
        queue_service_uri="https://st.queue.core.windows.net/",
        managed_identity=True,
        client_id="00000000-0000-0000-0000-000000000001",
    )


def test_identity_based_storage_from_the_account_name():
    """__accountName alone gives the public cloud's endpoints."""
    config = StorageConfig.from_environ({"AzureWebJobsStorage__accountName": "st"})
    assert config.blob_service_uri == "https://st.blob.core.windows.net"
    assert config.queue_service_uri == "https://st.queue.core.windows.net"
    assert not config.managed_identity


def test_no_storage_setting_is_a_configuration_error():
    """Without any AzureWebJobsStorage setting the store says which settings to set."""
    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage"):
        StorageConfig.from_environ({"AzureWebJobsStorage__blobServiceUri": "https://x"})


def _outcome_table() -> list[list[str]]:
    """The rows of docs/operations.md's outcome table, cells without their backticks."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Outcomes", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| exit code")
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows[1:]]


def _report_with(outcome: str) -> Report:
    return Report(
        run_id="20261204T020000Z-1a2b3c4d5e6f",
        dry_run=False,
        started_at=NOW,
        finished_at=NOW,
        registry="contoso.azurecr.io",
        errors=(ReportError("run", "x"),) if outcome != "succeeded" else (),
        stopped="x" if outcome == "stopped" else None,
    )


def test_the_one_outcome_table_matches_reports_records_and_telemetry():
    """docs/operations.md's table maps each exit code to the report's summary.outcome, the run
    status and telemetry's cleanup.outcome exactly as the code does; the last two agree."""
    rows = _outcome_table()
    codes = [row[0] for row in rows]
    assert {"0", "1", "2", "3", "null"} <= set(codes)
    for code, report_outcome, status, outcome, _ in rows:
        assert status == outcome, "run records and telemetry use one vocabulary"
        assert outcome in OUTCOMES
        if code == "null":
            assert report_outcome == "(no report)"
            continue
        assert state_for_exit_code(int(code)).value == status
        assert outcome_for_exit_code(int(code)) == outcome
        if report_outcome != "(no report)":
            report = _report_with(report_outcome)
            assert (report.outcome, report.exit_code) == (report_outcome, int(code))
            assert report.to_dict()["summary"]["outcome"] == report_outcome
