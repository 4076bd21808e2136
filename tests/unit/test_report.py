"""The report: the contract's JSON, the final action of each tag, exit codes, the text."""

from __future__ import annotations

import json
from datetime import timedelta

from cleanup.policy import StepKind
from cleanup.report import Outcome, ReportError, StepResult, build_report
from tests.builders import NOW, d1, d2, d3, index, listing, manifest, plan_of, pr, states

FINISHED = NOW + timedelta(seconds=41)


def results_for(steps, outcome, message=None):
    return [StepResult(step, outcome, message) for step in steps]


def sample_plan():
    return plan_of(
        [
            listing("web/api", manifest(d1, "PR1"), manifest(d2, "PR2", "latest")),
            listing("web/ui", manifest(d3, "PR3")),
        ],
        states(
            pr(1, "completed", closed="2026-11-30"),
            pr(2, "abandoned", closed="2026-12-01"),
            pr(3, "active"),
        ),
    )


def report_of(p, results=(), **kw):
    options = {
        "run_id": "run-1",
        "registry": "contoso.azurecr.io",
        "dry_run": False,
        "started_at": NOW,
        "finished_at": FINISHED,
    }
    options.update(kw)
    return build_report(p, results, **options)


def all_done(p):
    return results_for(p.steps, Outcome.DONE)


def test_json_puts_each_action_on_a_line_of_its_own():
    """The indented JSON is to_dict's data, with one line per action, manifest and error."""
    report = report_of(sample_plan(), all_done(sample_plan()))
    text = report.to_json()
    data = report.to_dict()
    assert json.loads(text) == data == json.loads(report.to_json(compact=True))
    items = [line.strip().rstrip(",") for line in text.splitlines() if line.startswith("    {")]
    expected = [*data["actions"], *data["manifests"], *data["errors"]]
    assert [json.loads(line) for line in items] == expected
    assert len(expected) > 3
    assert '  "summary": {' in text.splitlines()


def test_json_has_the_contract_shape():
    """The JSON carries the contract's keys, camelCase, with Z timestamps to the second."""
    data = json.loads(report_of(sample_plan(), all_done(sample_plan())).to_json())
    assert list(data) == [
        "schemaVersion",
        "runId",
        "dryRun",
        "startedAt",
        "finishedAt",
        "registry",
        "summary",
        "actions",
        "manifests",
        "errors",
    ]
    assert (data["schemaVersion"], data["startedAt"], data["finishedAt"]) == (
        1,
        "2026-12-04T02:00:00Z",
        "2026-12-04T02:00:41Z",
    )
    assert data["actions"][0] == {
        "repository": "web/api",
        "tag": "PR1",
        "digest": d1,
        "pullRequest": 1,
        "pullRequestStatus": "completed",
        "action": "delete",
        "reason": "pull request completed 2026-11-30",
    }


def test_every_manifest_deletion_is_listed_with_its_outcome():
    """`manifests` lists each planned manifest deletion: done, failed, or kept on purpose."""
    p = plan_of(
        listing("web/api", index(d1, "PR1", children=(d2, d3)), manifest(d2), manifest(d3)),
        states(pr(1, "completed")),
    )
    d2_step, d3_step, d1_step = list(p.steps)
    report = report_of(
        p,
        [
            StepResult(d2_step, Outcome.DONE),
            StepResult(d3_step, Outcome.KEPT, "another index uses it"),
            StepResult(d1_step, Outcome.DONE),
        ],
    )
    manifests = report.to_dict()["manifests"]
    assert [(m["digest"], m["action"]) for m in manifests] == [
        (d2, "delete"),
        (d3, "keep"),
        (d1, "delete"),
    ]
    assert "platform manifest of deleted index" in manifests[0]["reason"]
    assert "another index uses it" in manifests[1]["reason"]
    assert report.summary.manifests_deleted == 2


def test_summary_counts_a_successful_run():
    """Summary counts repositories, tags, PR tags, PRs, deleted, kept, failed, manifests."""
    p = sample_plan()
    summary = report_of(p, all_done(p)).to_dict()["summary"]
    assert summary == {
        "repositories": 2,
        "tagsScanned": 4,
        "pullRequestTags": 3,
        "pullRequests": 3,
        "deleted": 2,
        "kept": 1,
        "failed": 0,
        "manifestsDeleted": 1,
        "locked": 0,
        "outcome": "succeeded",
        "stopped": None,
    }


def test_actions_are_sorted_by_repository_and_tag():
    """Actions come in a stable order: repository, then tag."""
    actions = report_of(sample_plan()).actions
    assert [(a.repository, a.tag) for a in actions] == [
        ("web/api", "PR1"),
        ("web/api", "PR2"),
        ("web/ui", "PR3"),
    ]


def test_a_failed_deletion_is_failed_and_exits_1():
    """A deletion that failed shows `failed` with the error, counts in failed, exit code 1."""
    p = sample_plan()
    results = [
        (r if r.step.kind is StepKind.DELETE_TAG else type(r)(r.step, Outcome.FAILED, "HTTP 500"))
        for r in all_done(p)
    ]
    report = report_of(p, results)
    pr1 = next(a for a in report.actions if a.tag == "PR1")
    assert (pr1.action, pr1.reason) == ("failed", "pull request completed 2026-11-30; HTTP 500")
    assert report.summary.failed == 1
    assert report.summary.manifests_deleted == 0
    assert report.exit_code == 1
    assert report.errors == (ReportError(f"manifest:web/api@{d1}", "HTTP 500"),)


def test_a_skipped_index_is_an_error():
    """An index skipped because its platform manifest failed is reported, and so is its tag."""
    p = plan_of(
        listing("web/api", index(d1, "PR1", children=(d2,)), manifest(d2)),
        states(pr(1, "completed")),
    )
    child, parent = list(p.steps)
    report = report_of(
        p,
        [
            *results_for([child], Outcome.FAILED, "HTTP 503"),
            *results_for([parent], Outcome.SKIPPED),
        ],
    )
    assert [e.scope for e in report.errors] == [f"manifest:web/api@{d2}", f"manifest:web/api@{d1}"]
    assert [a.action for a in report.actions] == ["failed"]
    assert report.exit_code == 1


def test_a_dry_run_reports_the_plan_as_deletions():
    """In a dry run, planned deletions are `delete` and manifests count as planned."""
    p = sample_plan()
    report = report_of(p, dry_run=True)
    assert [a.action for a in report.actions] == ["delete", "delete", "keep"]
    assert (report.summary.manifests_deleted, report.exit_code) == (1, 0)


def test_a_stopped_run_keeps_everything_and_exits_3():
    """A stopped real run keeps every tag, says why, and exits 3."""
    report = report_of(sample_plan(), stopped="the plan would delete 2 tags, more than 1")
    assert [a.action for a in report.actions] == ["keep", "keep", "keep"]
    assert report.actions[0].reason.endswith("; not deleted: the run stopped")
    assert report.to_dict()["summary"]["outcome"] == "stopped"
    assert report.exit_code == 3


def test_a_failed_lookup_is_an_error():
    """A pull request whose lookup failed appears once in errors; exit code 1."""
    p = plan_of(listing("r", manifest(d1, "PR1", "pr-1")), states(pr(1, "unknown", error="boom")))
    report = report_of(p)
    assert report.errors == (ReportError("pullRequest:1", "lookup failed: boom"),)
    assert report.exit_code == 1


def test_an_incomplete_listing_is_an_error():
    """An incomplete listing is an error naming the repository."""
    p = plan_of(listing("r", manifest(d1, "PR1"), complete=False, error="page 3: HTTP 500"), {})
    assert report_of(p).errors == (
        ReportError("repository:r", "listing incomplete: page 3: HTTP 500"),
    )


def test_a_run_without_a_plan_still_reports():
    """A run stopped before planning reports its header, the stop and exit code 3."""
    report = report_of(None, stopped="Azure DevOps refused the credential: HTTP 401")
    assert (report.summary.repositories, report.exit_code) == (0, 3)
    assert "STOPPED" in report.render_text()


def test_text_of_a_dry_run_says_would_delete():
    """The text rendering of a dry run says "would delete", with aligned columns."""
    text = report_of(sample_plan(), dry_run=True).render_text()
    assert "dry run" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("REPOSITORY"))
    row = next(line for line in lines if "PR1" in line)
    assert "would delete" in row
    assert row.index("completed") == header.index("STATUS")
    assert row.index("pull request completed") == header.index("REASON")


def test_text_names_the_registry_and_counts():
    """The text starts with the registry and states the counts in words."""
    text = report_of(sample_plan(), all_done(sample_plan())).render_text()
    assert text.splitlines()[0].startswith("ACR pull-request cleanup of contoso.azurecr.io")
    assert "2 repositories, 4 tags scanned, 3 pull-request tags of 3 pull requests" in text
    assert "(41s)" in text


def test_text_neutralises_control_characters():
    """A hostile name cannot inject line breaks or escapes into the text report."""
    p = plan_of(listing("evil\x1b[2J", manifest(d1, "PR1")), states(pr(1, "active")))
    text = report_of(p).render_text()
    assert "\x1b" not in text
    assert "evil?[2J" in text


def test_a_deletion_refused_as_locked_is_kept_not_failed():
    """A step the registry refuses as locked keeps its tags, counts as locked, exit code 0."""
    p = plan_of(listing("web/api", manifest(d1, "PR1")), states(pr(1, "completed")))
    report = report_of(p, results_for(p.steps, Outcome.LOCKED, "disallowed"))
    assert (report.actions[0].action, report.summary.locked, report.exit_code) == ("keep", 1, 0)
    assert report.actions[0].reason.endswith("not deleted: the registry says it is locked")


def test_an_index_held_by_a_locked_platform_manifest_is_no_failure():
    """An index not attempted because its platform manifest turned out locked is kept, no error."""
    p = plan_of(
        listing("web/api", index(d1, "PR1", children=(d2,)), manifest(d2)),
        states(pr(1, "completed")),
    )
    child, index_step = list(p.steps)
    assert (child.digest, index_step.digest) == (d2, d1)
    results = [*results_for([child], Outcome.LOCKED), *results_for([index_step], Outcome.SKIPPED)]
    report = report_of(p, results)
    assert (report.errors, report.exit_code, report.summary.manifests_deleted) == ((), 0, 0)
    assert (report.actions[0].action, report.summary.locked) == ("keep", 1)
