"""The metrics and the summary log line a run emits, read back from in-memory OpenTelemetry."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from cleanup import telemetry
from cleanup.report import Report, ReportError, Summary
from tests.otel import in_memory_telemetry

SUMMARY_DIMENSIONS = {
    "cleanup.outcome",
    "cleanup.registry",
    "cleanup.deleted",
    "cleanup.kept",
    "cleanup.failed",
    "cleanup.dry_run",
    "cleanup.run_id",
}


def report(registry: str, *, errors: tuple[ReportError, ...] = (), dry_run: bool = False):
    started = datetime(2026, 12, 4, 2, 0, tzinfo=UTC)
    return Report(
        run_id="20261204T020000Z-1a2b3c4d5e6f",
        dry_run=dry_run,
        started_at=started,
        finished_at=started + timedelta(seconds=41),
        registry=registry,
        summary=Summary(
            repositories=2,
            tags_scanned=40,
            pull_request_tags=12,
            pull_requests=7,
            deleted=9,
            kept=3,
            failed=len(errors),
            manifests_deleted=8,
        ),
        errors=errors,
    )


def a_registry() -> str:
    return f"r{secrets.token_hex(4)}.azurecr.io"


def points_for(registry: str) -> dict[tuple[str, tuple[tuple[str, object], ...]], object]:
    return {
        (p.metric, tuple(sorted((k, v) for k, v in p.attributes.items() if k != "registry"))): (
            p.value
        )
        for p in in_memory_telemetry().points()
        if p.attributes.get("registry") == registry
    }


def summary_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if hasattr(r, "cleanup.outcome")]


def test_a_run_counts_its_work_with_the_registry_as_a_dimension(caplog):
    """record_run adds the report's counts to each counter, keyed by registry."""
    in_memory_telemetry()
    registry = a_registry()
    telemetry.record_run(report(registry), 41.0)
    points = points_for(registry)
    assert points[("cleanup.tags.scanned", ())] == 40
    assert points[("cleanup.pull_requests.looked_up", ())] == 7
    assert points[("cleanup.tags.deleted", (("dry_run", False),))] == 9
    assert points[("cleanup.manifests.deleted", (("dry_run", False),))] == 8
    assert points[("cleanup.runs", (("dry_run", False), ("outcome", "succeeded")))] == 1
    count, total = points[("cleanup.run.duration", (("dry_run", False), ("outcome", "succeeded")))]
    assert (count, total) == (1, 41.0)
    assert ("cleanup.failures", ()) not in points


def test_failures_count_every_reported_error_and_make_the_run_partial():
    """Each entry of errors is one failure; a run with errors is `partial`."""
    in_memory_telemetry()
    registry = a_registry()
    errors = (
        ReportError("tag:web/api:PR1", "delete failed: 500"),
        ReportError("pullRequest:7", "lookup failed: timeout"),
    )
    telemetry.record_run(report(registry, errors=errors), 2.5)
    points = points_for(registry)
    assert points[("cleanup.failures", ())] == 2
    assert points[("cleanup.runs", (("dry_run", False), ("outcome", "partial")))] == 1


def test_one_summary_line_per_run_carries_the_dimensions_alerts_query(caplog):
    """The summary log line has exactly the customDimensions names the alerts use."""
    in_memory_telemetry()
    registry = a_registry()
    with caplog.at_level(logging.INFO, logger="cleanup"):
        telemetry.record_run(report(registry, dry_run=True), 41.0)
    (line,) = summary_records(caplog)
    assert line.levelno == logging.INFO
    values = {name: getattr(line, name) for name in SUMMARY_DIMENSIONS}
    assert values == {
        "cleanup.outcome": "succeeded",
        "cleanup.registry": registry,
        "cleanup.deleted": 9,
        "cleanup.kept": 3,
        "cleanup.failed": 0,
        "cleanup.dry_run": True,
        "cleanup.run_id": "20261204T020000Z-1a2b3c4d5e6f",
    }
    assert "9 deleted, 3 kept, 0 failed" in line.getMessage()


def test_a_run_without_a_report_counts_as_failed(caplog):
    """record_failed_run: one failed run, one failure, an error-level summary line."""
    in_memory_telemetry()
    registry = a_registry()
    with caplog.at_level(logging.INFO, logger="cleanup"):
        telemetry.record_failed_run(
            registry=registry, run_id="r1", dry_run=False, duration_s=None, reason="did not finish"
        )
    points = points_for(registry)
    assert points[("cleanup.runs", (("dry_run", False), ("outcome", "failed")))] == 1
    assert points[("cleanup.failures", ())] == 1
    (line,) = summary_records(caplog)
    assert line.levelno == logging.ERROR
    assert getattr(line, "cleanup.outcome") == "failed"
    assert "did not finish" in line.getMessage()
    # No report: no counts, rather than zeros an alert or a dashboard would take as a fact.
    assert "not known" in line.getMessage()
    assert not any(hasattr(line, f"cleanup.{n}") for n in ("deleted", "kept", "failed"))


@pytest.mark.parametrize(
    ("exit_code", "outcome"), [(0, "succeeded"), (1, "partial"), (2, "failed"), (3, "failed")]
)
def test_exit_codes_map_to_outcomes(exit_code, outcome):
    """0 succeeded, 1 partial, anything else failed."""
    assert telemetry.outcome_for_exit_code(exit_code) == outcome


def test_the_execution_span_records_an_escaping_exception():
    """An exception leaving execution_span is recorded on the span, which ends in error."""
    capture = in_memory_telemetry()
    run_id = f"run-{secrets.token_hex(4)}"
    with (
        pytest.raises(RuntimeError),
        telemetry.execution_span(run_id=run_id, registry="x", dry_run=False, trigger="http"),
    ):
        raise RuntimeError("boom")
    (span,) = [s for s in capture.finished_spans() if s.attributes.get("cleanup.run_id") == run_id]
    assert span.name == "cleanup.execute"
    assert span.status.status_code.name == "ERROR"
    assert [e.name for e in span.events] == ["exception"]


@pytest.mark.parametrize(
    ("environ", "worker"),
    [
        ({"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"}, True),
        ({"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "True"}, True),
        ({"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "false"}, False),
        ({}, False),
    ],
)
def test_the_worker_path_is_recognised(environ, worker):
    """PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true means the worker configures telemetry."""
    assert telemetry.worker_configures_telemetry(environ) is worker


def test_configure_leaves_the_worker_path_and_unconfigured_processes_alone():
    """configure() does nothing under the worker path or without a connection string."""
    connection = "InstrumentationKey=00000000-0000-0000-0000-000000000000"
    assert not telemetry.configure(
        {
            "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true",
            "APPLICATIONINSIGHTS_CONNECTION_STRING": connection,
        }
    )
    assert not telemetry.configure({})
