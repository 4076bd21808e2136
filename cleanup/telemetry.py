"""OpenTelemetry metrics, spans and the one summary log line per run.

Everything goes through the global OpenTelemetry API; whoever owns the process configures the
providers:

- In the Function App the Python worker does, when `PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`
  is `true` and `azure-monitor-opentelemetry` is installed: it calls `configure_azure_monitor`
  itself, so the app must not (a second call would export everything twice).
- The command line may call `configure(environ)`, which configures Azure Monitor only when
  `APPLICATIONINSIGHTS_CONNECTION_STRING` is set and the worker path is not in use.
- Tests install in-memory readers and exporters.

Without providers every call here is a no-op. Attributes carry names, counts, flags and run
ids only: never a setting's value that could be a secret, never a URL with credentials.

Metric dimensions: `registry` on every metric, `dry_run` on the per-run counts, `outcome`
(succeeded | partial | failed) on `cleanup.runs`. The summary log line's `extra=` keys
(`cleanup.outcome`, `cleanup.registry`, `cleanup.deleted`, `cleanup.kept`, `cleanup.failed`,
`cleanup.dry_run`, `cleanup.run_id`) become Application Insights customDimensions; alerts query
those names, so they are part of the product's interface.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import metrics, trace
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from cleanup.report import Report

tracer: Final = trace.get_tracer("cleanup")
"""Spans of a run and of its phases (the runner opens one per phase)."""

_meter = metrics.get_meter("cleanup")
_tags_scanned = _meter.create_counter(
    "cleanup.tags.scanned", unit="{tag}", description="Tags listed in the selected repositories"
)
_pull_requests = _meter.create_counter(
    "cleanup.pull_requests.looked_up",
    unit="{pull_request}",
    description="Distinct pull requests looked up in Azure DevOps",
)
_tags_deleted = _meter.create_counter(
    "cleanup.tags.deleted",
    unit="{tag}",
    description="Tags deleted (planned, in a dry run: see the dry_run dimension)",
)
_manifests_deleted = _meter.create_counter(
    "cleanup.manifests.deleted", unit="{manifest}", description="Manifests deleted"
)
_failures = _meter.create_counter(
    "cleanup.failures",
    unit="{failure}",
    description="Failed lookups, deletions and listings; stopped and crashed runs",
)
_duration = _meter.create_histogram(
    "cleanup.run.duration", unit="s", description="Wall-clock duration of a cleanup run"
)
_runs = _meter.create_counter("cleanup.runs", unit="{run}", description="Cleanup runs by outcome")

log = logging.getLogger("cleanup.summary")

OUTCOMES: Final = ("succeeded", "partial", "failed")


def outcome_for_exit_code(exit_code: int) -> str:
    """0 succeeded, 1 partial, anything else (2 configuration, 3 stopped, crash) failed.

    The run records' states use these names too (`cleanup.runs.state_for_exit_code`); the
    report's `summary.outcome` says `stopped` for exit 3. docs/operations.md has the table."""
    return {0: "succeeded", 1: "partial"}.get(exit_code, "failed")


def _count(summary: Mapping[str, Any], key: str) -> int:
    value = summary.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def record_run(report: Report, duration_s: float) -> None:
    """Emit the run's metrics and its one summary log line."""
    data = report.to_dict()
    summary = data.get("summary") or {}
    registry = str(data.get("registry", ""))
    dry_run = bool(data.get("dryRun", False))
    run_id = str(data.get("runId", ""))
    errors = data.get("errors") or []
    outcome = outcome_for_exit_code(report.exit_code)
    base: dict[str, AttributeValue] = {"registry": registry}
    per_run: dict[str, AttributeValue] = {**base, "dry_run": dry_run}
    _tags_scanned.add(_count(summary, "tagsScanned"), base)
    _pull_requests.add(_count(summary, "pullRequests"), base)
    _tags_deleted.add(_count(summary, "deleted"), per_run)
    _manifests_deleted.add(_count(summary, "manifestsDeleted"), per_run)
    # `errors` holds every failure once: failed lookups and deletions, incomplete listings,
    # and the reason a run stopped (summary.failed counts the failed deletions among them).
    failures = len(errors) if isinstance(errors, list) else 0
    if failures:
        _failures.add(failures, base)
    _duration.record(duration_s, {**per_run, "outcome": outcome})
    _runs.add(1, {**per_run, "outcome": outcome})
    _summary_line(
        outcome=outcome,
        registry=registry,
        run_id=run_id,
        dry_run=dry_run,
        counts=(_count(summary, "deleted"), _count(summary, "kept"), _count(summary, "failed")),
        duration_s=duration_s,
        extra={
            "cleanup.exit_code": report.exit_code,
            "cleanup.tags_scanned": _count(summary, "tagsScanned"),
            "cleanup.manifests_deleted": _count(summary, "manifestsDeleted"),
            "cleanup.errors": len(errors) if isinstance(errors, list) else 0,
        },
    )


def record_failed_run(
    *, registry: str, run_id: str, dry_run: bool, duration_s: float | None, reason: str
) -> None:
    """A run that produced no report (it crashed, lost its lock, or is found dead later)."""
    base: dict[str, AttributeValue] = {"registry": registry}
    per_run: dict[str, AttributeValue] = {**base, "dry_run": dry_run, "outcome": "failed"}
    _failures.add(1, base)
    if duration_s is not None:
        _duration.record(duration_s, per_run)
    _runs.add(1, per_run)
    _summary_line(
        outcome="failed",
        registry=registry,
        run_id=run_id,
        dry_run=dry_run,
        counts=None,  # no report: what it deleted before it ended is not known
        duration_s=duration_s,
        extra={"cleanup.reason": reason},
    )


def _summary_line(
    *,
    outcome: str,
    registry: str,
    run_id: str,
    dry_run: bool,
    counts: tuple[int, int, int] | None,
    duration_s: float | None,
    extra: Mapping[str, Any],
) -> None:
    """The run's one summary line; `counts` (deleted, kept, failed) is None without a report,
    and then the line carries no counts at all rather than zeros that look like a fact."""
    level = {"succeeded": logging.INFO, "partial": logging.WARNING}.get(outcome, logging.ERROR)
    took = f" in {duration_s:.1f} s" if duration_s is not None else ""
    if counts is None:
        tally = "no report, so what it deleted is not known"
        numbers: dict[str, int] = {}
    else:
        deleted, kept, failed = counts
        tally = f"{deleted} deleted, {kept} kept, {failed} failed"
        numbers = {"cleanup.deleted": deleted, "cleanup.kept": kept, "cleanup.failed": failed}
    log.log(
        level,
        "cleanup run %s %s%s: %s%s (registry %s)%s",
        run_id,
        outcome,
        " (dry run)" if dry_run else "",
        tally,
        took,
        registry,
        f": {extra['cleanup.reason']}" if "cleanup.reason" in extra else "",
        extra={
            "cleanup.outcome": outcome,
            "cleanup.registry": registry,
            **numbers,
            "cleanup.dry_run": dry_run,
            "cleanup.run_id": run_id,
            **({"cleanup.duration_s": round(duration_s, 3)} if duration_s is not None else {}),
            **extra,
        },
    )


@contextlib.contextmanager
def execution_span(
    *, run_id: str, registry: str, dry_run: bool, trigger: str | None = None
) -> Iterator[trace.Span]:
    """The Function App's span around one queued run (the runner's `cleanup.run` span and its
    phases nest inside); an exception escaping it is recorded on it."""
    attributes: dict[str, str | bool] = {
        "cleanup.run_id": run_id,
        "cleanup.registry": registry,
        "cleanup.dry_run": dry_run,
    }
    if trigger is not None:
        attributes["cleanup.trigger"] = trigger
    with tracer.start_as_current_span(
        "cleanup.execute",
        attributes=attributes,
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        yield span


def worker_configures_telemetry(environ: Mapping[str, str]) -> bool:
    """True when the Functions Python worker configures Azure Monitor itself."""
    return environ.get("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "").strip().lower() in (
        "true",
        "1",
    )


def configure(environ: Mapping[str, str]) -> bool:
    """Configure Azure Monitor for a process outside the Functions worker (the CLI).

    Does nothing (False) when the worker does it or no connection string is set.
    """
    if worker_configures_telemetry(environ):
        return False
    if not environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip():
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor

    configure_azure_monitor(logger_name="cleanup")
    if logging.getLogger("cleanup").level == logging.NOTSET:
        logging.getLogger("cleanup").setLevel(logging.INFO)
    return True
