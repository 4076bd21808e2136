"""The run's report: the contract's JSON, and a plain-text rendering a newcomer can read.

`build_report(plan, results, ...)` makes it from the Plan and what happened to each step
(a StepResult per executed step; a step without one was not executed).

Choices the contract leaves open:

- A planned deletion that failed, or was skipped because an earlier step it waits for failed,
  is `failed` and counts in `summary.failed` (its tag is still there, so it is kept by failure).
- A deletion the registry refused as locked (Outcome.LOCKED), and a step skipped only because
  what it waits for is locked, is `keep` and counts in `locked`: not a failure, as the
  contract says of locks.
- A manifest that came to be needed between the plan and its deletion (cleanup.revalidation)
  keeps its manifest: its pull-request tags alone are deleted (`TAGS_ONLY`, `delete`), or it
  is kept (`KEPT`, `keep`); neither is a failure.
- A deletion not executed because the run stopped is `keep`, its reason saying so; in a dry run
  it is `delete` (the plan), rendered "would delete".
- `summary` adds `locked` (kept because locked), `outcome` (`succeeded`, `partial`, `stopped`)
  and `stopped` (why the run stopped, or null).
- `errors` holds failed lookups (scope `pullRequest:ID`), incomplete listings
  (`repository:NAME`), failed steps (`tag:REPO:TAG`, `manifest:REPO@DIGEST`) and whatever the
  runner adds (`run` for a stop).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cleanup.policy import Action, Plan, Step, StepKind, TagDecision

SCHEMA_VERSION = 1


class Outcome(enum.Enum):
    """What became of one planned step."""

    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    """Not attempted: a step it waits for failed."""
    NOT_EXECUTED = "notExecuted"
    """Not attempted: a dry run, or the run stopped."""
    LOCKED = "locked"
    """The registry refused: the item was locked after it was listed. Kept, not a failure."""
    TAGS_ONLY = "tagsOnly"
    """The manifest came to be needed after the plan: only its pull-request tags were deleted."""
    KEPT = "kept"
    """Not attempted: the manifest came to be needed after the plan. Kept, not a failure."""


@dataclass(frozen=True, slots=True)
class StepResult:
    step: Step
    outcome: Outcome
    message: str | None = None
    tags_deleted: tuple[str, ...] = ()
    """Of a step whose manifest stays (TAGS_ONLY) that then failed or met a lock part-way:
    the tags it had deleted by then."""


@dataclass(frozen=True, slots=True)
class ReportError:
    scope: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"scope": self.scope, "message": self.message}


@dataclass(frozen=True, slots=True)
class ReportAction:
    repository: str
    tag: str
    digest: str
    pull_request: int
    pull_request_status: str | None
    action: str
    """`delete`, `keep` or `failed`."""
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "pullRequest": self.pull_request,
            "pullRequestStatus": self.pull_request_status,
            "action": self.action,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ManifestAction:
    """One manifest the plan deletes (with its tags, or as a platform manifest or referrer)."""

    repository: str
    digest: str
    action: str
    """`delete` (done, or planned in a dry run), `keep` or `failed`."""
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {
            "repository": self.repository,
            "digest": self.digest,
            "action": self.action,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Summary:
    repositories: int = 0
    tags_scanned: int = 0
    pull_request_tags: int = 0
    pull_requests: int = 0
    deleted: int = 0
    kept: int = 0
    failed: int = 0
    manifests_deleted: int = 0
    locked: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "repositories": self.repositories,
            "tagsScanned": self.tags_scanned,
            "pullRequestTags": self.pull_request_tags,
            "pullRequests": self.pull_requests,
            "deleted": self.deleted,
            "kept": self.kept,
            "failed": self.failed,
            "manifestsDeleted": self.manifests_deleted,
            "locked": self.locked,
        }


def _timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Item(Protocol):
    """An action, a manifest action or an error: one line of the report's JSON."""

    def to_dict(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Report:
    """One run's report. `exit_code`: 0 all went well, 1 some parts failed, 3 stopped."""

    run_id: str
    dry_run: bool
    started_at: datetime
    finished_at: datetime
    registry: str
    summary: Summary = field(default_factory=Summary)
    actions: tuple[ReportAction, ...] = ()
    """Sorted by (repository, tag)."""
    manifests: tuple[ManifestAction, ...] = ()
    """Every manifest deletion of the plan, in the order the plan runs them."""
    errors: tuple[ReportError, ...] = ()
    stopped: str | None = None

    @property
    def outcome(self) -> str:
        if self.stopped is not None:
            return "stopped"
        return "partial" if self.errors or self.summary.failed else "succeeded"

    @property
    def exit_code(self) -> int:
        return {"succeeded": 0, "partial": 1, "stopped": 3}[self.outcome]

    def _head(self) -> dict[str, Any]:
        summary: dict[str, Any] = self.summary.to_dict()
        summary["outcome"] = self.outcome
        summary["stopped"] = self.stopped
        return {
            "schemaVersion": SCHEMA_VERSION,
            "runId": self.run_id,
            "dryRun": self.dry_run,
            "startedAt": _timestamp(self.started_at),
            "finishedAt": _timestamp(self.finished_at),
            "registry": self.registry,
            "summary": summary,
        }

    def _lists(self) -> tuple[tuple[str, Sequence[_Item]], ...]:
        return (("actions", self.actions), ("manifests", self.manifests), ("errors", self.errors))

    def to_dict(self) -> dict[str, Any]:
        data = self._head()
        for key, items in self._lists():
            data[key] = [item.to_dict() for item in items]
        return data

    def to_json(self, *, compact: bool = False) -> str:
        """The contract's JSON: `json_parts` joined, or all on one line when `compact`."""
        if compact:
            return json.dumps(self.to_dict(), ensure_ascii=False)
        return "".join(self.json_parts())

    def json_parts(self) -> Iterator[str]:
        """The JSON, indented, in pieces: each action, manifest and error on a line of its own.

        Easy to read and to grep, written an item at a time by json's C encoder, so a report of
        tens of thousands of deletions is never one string in memory (`json.dumps(indent=...)`
        also falls back to the pure-Python encoder, 50 ms for a thousand deletions).
        """
        yield "{\n"
        for key, value in self._head().items():
            text = json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            yield f"  {json.dumps(key)}: {text},\n"
        lists = self._lists()
        for number, (key, items) in enumerate(lists, start=1):
            end = "\n" if number == len(lists) else ",\n"
            if not items:
                yield f'  "{key}": []{end}'
                continue
            yield f'  "{key}": [\n'
            for index, item in enumerate(items, start=1):
                line = json.dumps(item.to_dict(), ensure_ascii=False)
                yield f"    {line}{'' if index == len(items) else ','}\n"
            yield f"  ]{end}"
        yield "}"

    def render_text(self) -> str:
        """A plain-text report: header, summary, a table of the actions, the errors."""
        return _render_text(self)


# --- building ---------------------------------------------------------------------------------


def _step_key(step: Step) -> tuple[str, StepKind, str, str | None]:
    return (step.repository, step.kind, step.digest, step.tag)


def build_report(
    plan: Plan | None,
    results: Iterable[StepResult] = (),
    *,
    run_id: str,
    registry: str,
    dry_run: bool,
    started_at: datetime,
    finished_at: datetime,
    stopped: str | None = None,
    errors: Sequence[ReportError] = (),
) -> Report:
    """The report of a run: the plan's decisions, made final by what happened to each step.

    A delete step without a result counts as not executed. `plan` is None when the run
    stopped before it could plan (then the report has only its header, errors and stop).
    """
    plan = plan or Plan()
    outcomes: dict[tuple[str, StepKind, str, str | None], StepResult] = {
        _step_key(result.step): result for result in results
    }
    steps_by_tag: dict[tuple[str, str], Step] = {}
    all_errors: list[ReportError] = [
        ReportError(f"pullRequest:{pull.id}", f"lookup failed: {pull.error or 'no answer'}")
        for pull in plan.lookup_failures
    ]
    audit: list[ManifestAction] = []
    held: set[tuple[str, StepKind, str, str | None]] = set()
    """Steps kept by a lock: LOCKED, or SKIPPED only because what they wait for is held."""
    for repository in plan.repositories:
        locked_digests: set[str] = set()
        if not repository.complete:
            all_errors.append(
                ReportError(
                    f"repository:{repository.repository}",
                    f"listing incomplete: {repository.error or 'the listing ended early'}",
                )
            )
        for step in repository.steps:
            for tag_name in step.tags:
                steps_by_tag[(step.repository, tag_name)] = step
            result = outcomes.get(_step_key(step))
            outcome = result.outcome if result else Outcome.NOT_EXECUTED
            if step.kind is StepKind.DELETE_MANIFEST:
                audit.append(_manifest_action(step, result, dry_run=dry_run, stopped=stopped))
            if outcome is Outcome.SKIPPED and step.after and set(step.after) <= locked_digests:
                outcome = Outcome.LOCKED
            if outcome is Outcome.LOCKED:
                held.add(_step_key(step))
                locked_digests.add(step.digest)
            if result is not None and outcome in (Outcome.FAILED, Outcome.SKIPPED):
                kind = "tag" if step.kind is StepKind.DELETE_TAG else "manifest"
                all_errors.append(ReportError(f"{kind}:{step.target}", _failure(result)))

    actions = []
    counts = {"delete": 0, "keep": 0, "failed": 0}
    locked = 0
    for decision in plan.decisions:
        carrier = steps_by_tag.get((decision.repository, decision.tag))
        key = _step_key(carrier) if carrier is not None else None
        result = outcomes.get(key) if key is not None else None
        gone = result is not None and decision.tag in result.tags_deleted
        is_held = key in held and not gone
        action, reason = _tag_action(
            decision, result, held=is_held, gone=gone, dry_run=dry_run, stopped=stopped
        )
        counts[action] += 1
        locked += decision.locked or is_held
        actions.append(
            ReportAction(
                decision.repository,
                decision.tag,
                decision.digest,
                decision.pr_id,
                decision.pr_status.value if decision.pr_status is not None else None,
                action,
                reason,
            )
        )
    actions.sort(key=lambda a: (a.repository, a.tag))
    all_errors.extend(errors)
    if stopped is not None and not any(error.scope == "run" for error in all_errors):
        all_errors.append(ReportError("run", stopped))
    summary = Summary(
        repositories=len(plan.repositories),
        tags_scanned=plan.tags_scanned,
        pull_request_tags=plan.pull_request_tags,
        pull_requests=plan.pull_requests,
        deleted=counts["delete"],
        kept=counts["keep"],
        failed=counts["failed"],
        manifests_deleted=sum(1 for m in audit if m.action == "delete"),
        locked=locked,
    )
    return Report(
        run_id=run_id,
        dry_run=dry_run,
        started_at=started_at,
        finished_at=finished_at,
        registry=registry,
        summary=summary,
        actions=tuple(actions),
        manifests=tuple(audit),
        errors=tuple(all_errors),
        stopped=stopped,
    )


def _manifest_action(
    step: Step, result: StepResult | None, *, dry_run: bool, stopped: str | None
) -> ManifestAction:
    outcome = result.outcome if result is not None else Outcome.NOT_EXECUTED
    if outcome is Outcome.DONE or (dry_run and outcome is Outcome.NOT_EXECUTED):
        action, reason = "delete", step.reason
    elif outcome in (Outcome.FAILED, Outcome.SKIPPED):
        assert result is not None  # noqa: S101 - only a result can fail  # nosec B101
        action, reason = "failed", f"{step.reason}; {_failure(result)}"
    elif outcome is Outcome.NOT_EXECUTED:
        why = "the run stopped" if stopped is not None else "not executed"
        action, reason = "keep", f"{step.reason}; not deleted: {why}"
    else:  # TAGS_ONLY, KEPT, LOCKED: kept on purpose
        detail = result.message if result is not None and result.message else outcome.value
        action, reason = "keep", f"{step.reason}; not deleted: {detail}"
    return ManifestAction(step.repository, step.digest, action, reason)


def _failure(result: StepResult) -> str:
    if result.outcome is Outcome.SKIPPED:
        return f"not attempted: {result.message or 'a deletion it waits for failed'}"
    return result.message or "deletion failed"


def _tag_action(
    decision: TagDecision,
    result: StepResult | None,
    *,
    held: bool,
    gone: bool,
    dry_run: bool,
    stopped: str | None,
) -> tuple[str, str]:
    """(action, reason) of one pull-request tag: `gone` if deleted before its step failed or
    met a lock, `held` if a lock keeps it."""
    if gone:
        return "delete", f"{decision.reason}; the tag alone was deleted"
    if held:
        return "keep", f"{decision.reason}; not deleted: the registry says it is locked"
    return _final(decision, result, dry_run=dry_run, stopped=stopped)


def _final(
    decision: TagDecision, result: StepResult | None, *, dry_run: bool, stopped: str | None
) -> tuple[str, str]:
    """(action, reason) of one pull-request tag once its step ran, failed or never ran."""
    if decision.action is Action.KEEP:
        return "keep", decision.reason
    if result is not None and result.outcome is not Outcome.NOT_EXECUTED:
        return _executed(decision.reason, result)
    if dry_run:
        return "delete", decision.reason
    why = "the run stopped" if stopped is not None else "not executed"
    return "keep", f"{decision.reason}; not deleted: {why}"


def _executed(reason: str, result: StepResult) -> tuple[str, str]:
    if result.outcome is Outcome.DONE:
        return "delete", reason
    if result.outcome is Outcome.TAGS_ONLY:
        return "delete", f"{reason}; the tag alone was deleted: {result.message}"
    if result.outcome is Outcome.KEPT:
        return "keep", f"{reason}; not deleted: {result.message}"
    if result.outcome is Outcome.LOCKED:
        return "keep", f"{reason}; not deleted: the registry says it is locked"
    return "failed", f"{reason}; {_failure(result)}"


# --- text -------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """One printable line: hostile names cannot break the table or the terminal."""
    return "".join(char if char.isprintable() else "?" for char in text)


def _duration(report: Report) -> str:
    seconds = max(0, int((report.finished_at - report.started_at).total_seconds()))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _render_text(report: Report) -> str:
    s = report.summary
    would = "would delete" if report.dry_run else "deleted"
    mode = "dry run: nothing was deleted" if report.dry_run else "deleting"
    lines = [
        f"ACR pull-request cleanup of {_clean(report.registry)} ({mode})",
        f"run {_clean(report.run_id)}, {_timestamp(report.started_at)} to "
        f"{_timestamp(report.finished_at)} ({_duration(report)})",
    ]
    if report.stopped is not None:
        lines.append(f"STOPPED: {_clean(report.stopped)}")
    lines += [
        "",
        f"{s.repositories} repositories, {s.tags_scanned} tags scanned, "
        f"{s.pull_request_tags} pull-request tags of {s.pull_requests} pull requests",
        f"{would}: {s.deleted} tags, {s.manifests_deleted} manifests; kept: {s.kept} tags "
        f"({s.locked} locked); failed: {s.failed}",
        "",
    ]
    label = {"delete": would, "keep": "keep", "failed": "FAILED"}
    lines += _action_table(report, label)
    lines += _manifest_table(report, label)
    if report.errors:
        lines += ["", f"Errors ({len(report.errors)}):"]
        lines += [f"  {_clean(e.scope)}: {_clean(e.message)}" for e in report.errors]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Aligned columns, the last one free."""
    last = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[last]
        for row in rows
    ]


def _manifest_table(report: Report, label: dict[str, str]) -> list[str]:
    if not report.manifests:
        return []
    rows: list[tuple[str, ...]] = [("REPOSITORY", "MANIFEST", "ACTION", "REASON")]
    rows += [
        (_clean(m.repository), m.digest[:19], label[m.action], _clean(m.reason))
        for m in report.manifests
    ]
    return ["", *_table(rows)]


def _action_table(report: Report, label: dict[str, str]) -> list[str]:
    rows: list[tuple[str, ...]] = [("REPOSITORY", "TAG", "PR", "STATUS", "ACTION", "REASON")]
    rows += [
        (
            _clean(a.repository),
            _clean(a.tag),
            str(a.pull_request),
            a.pull_request_status or "-",
            label[a.action],
            _clean(a.reason),
        )
        for a in report.actions
    ]
    if len(rows) == 1:
        return ["No pull-request tags found."]
    return _table(rows)


__all__ = [
    "SCHEMA_VERSION",
    "ManifestAction",
    "Outcome",
    "Report",
    "ReportAction",
    "ReportError",
    "StepResult",
    "Summary",
    "build_report",
]
