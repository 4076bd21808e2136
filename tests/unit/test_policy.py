"""The policy: which tags and manifests a plan deletes, why, and in which order."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta

import pytest

from cleanup.model import PullRequestStatus
from cleanup.policy import Action, PolicyRules, StepKind, plan, pr_id, pr_ids
from cleanup.settings import load_settings, parse_tag_pattern
from tests.builders import (
    NOW,
    d1,
    d2,
    d3,
    d4,
    d5,
    d6,
    digest,
    environment,
    index,
    listing,
    manifest,
    plan_of,
    pr,
    rules,
    states,
    tag,
)

DEFAULT = parse_tag_pattern(r"(?i)^pr-?(?P<pr>\d+)$")


def decision(p, name, repository="web/api"):
    return next(d for d in p.decisions if d.tag == name and d.repository == repository)


def step_targets(p):
    return [(s.kind, s.tag or s.digest) for s in p.steps]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("PR12", 12),
        ("pr12", 12),
        ("pr-12", 12),
        ("PR-0012", 12),
        ("PR0", None),
        ("PR", None),
        ("PR12a", None),
        ("xPR12", None),
        ("PR12\n", None),
        ("latest", None),
        ("PR" + "9" * 10, None),
        ("PR2147483647", 2147483647),
        ("PR2147483648", None),
        ("PR\u0661\u0662", None),
        ("PR1" + "0" * 126, None),
    ],
)
def test_pr_id_with_the_default_pattern(name, expected):
    """The default pattern reads PR ids case-insensitively, in full, ASCII, 1..2**31-1."""
    assert pr_id(name, DEFAULT) == expected


def test_pr_id_ignores_tags_longer_than_acr_allows():
    """A tag over 128 characters is never a PR tag, whatever the pattern."""
    pattern = parse_tag_pattern(r"x*(?P<pr>\d+)")
    assert pr_id("x" * 126 + "12", pattern) == 12
    assert pr_id("x" * 127 + "12", pattern) is None


def test_pr_id_reads_a_custom_pattern_in_full():
    """A custom pattern matches the whole tag, anchors or not."""
    pattern = parse_tag_pattern(r"build-(?P<pr>\d+)-\w+")
    assert pr_id("build-7-linux", pattern) == 7
    assert pr_id("xbuild-7-linux", pattern) is None


def test_pr_ids_names_each_pull_request_once_from_complete_listings():
    """The ids to look up are distinct and skip incomplete listings (kept regardless)."""
    listings = [
        listing("a", manifest(d1, "PR1", "pr-1", "latest"), manifest(d2, "PR2")),
        listing("b", manifest(d1, "PR3"), complete=False, error="paging broke off"),
    ]
    assert pr_ids(listings, rules()) == {1, 2}


@pytest.mark.parametrize(
    ("pull", "grace", "action", "reason"),
    [
        (pr(1, "active"), timedelta(0), Action.KEEP, "pull request active"),
        (
            pr(1, "completed", closed="2026-11-30T10:00"),
            timedelta(0),
            Action.DELETE,
            "pull request completed 2026-11-30",
        ),
        (
            pr(1, "abandoned", closed="2026-12-01"),
            timedelta(0),
            Action.DELETE,
            "pull request abandoned 2026-12-01",
        ),
        (
            pr(1, "abandoned", closed="2026-12-01"),
            timedelta(days=7),
            Action.KEEP,
            "pull request abandoned 2026-12-01, within the 7d grace period",
        ),
        (
            pr(1, "completed", closed="2026-11-27T02:00"),
            timedelta(days=7),
            Action.DELETE,
            "pull request completed 2026-11-27",
        ),
        (
            pr(1, "completed", closed="2026-11-27T02:00:01"),
            timedelta(days=7),
            Action.KEEP,
            "pull request completed 2026-11-27, within the 7d grace period",
        ),
        (
            pr(1, "notFound"),
            timedelta(0),
            Action.KEEP,
            "pull request not found; CLEANUP_UNKNOWN_PR=keep",
        ),
        (
            pr(1, "unknown", error="HTTP 500 after 5 attempts"),
            timedelta(0),
            Action.KEEP,
            "lookup failed: HTTP 500 after 5 attempts",
        ),
    ],
)
def test_status_rules(pull, grace, action, reason):
    """Active keeps, closed past the grace deletes, not-found follows the rule, failure keeps."""
    p = plan_of(listing("web/api", manifest(d1, "PR1")), states(pull), policy=rules(grace=grace))
    assert (decision(p, "PR1").action, decision(p, "PR1").reason) == (action, reason)


def test_not_found_deletes_with_unknown_pr_delete():
    """CLEANUP_UNKNOWN_PR=delete deletes tags of pull requests Azure DevOps does not have."""
    p = plan_of(
        listing("web/api", manifest(d1, "PR1")),
        states(pr(1, "notFound")),
        policy=rules(unknown_pr="delete"),
    )
    assert decision(p, "PR1").action is Action.DELETE
    assert decision(p, "PR1").reason == "pull request not found; CLEANUP_UNKNOWN_PR=delete"


def test_not_found_says_where_it_was_looked_for():
    """The reason names where Azure DevOps did not find the pull request."""
    missing = dataclasses.replace(pr(1, "notFound"), where="in project web")
    p = plan_of(listing("web/api", manifest(d1, "PR1")), states(missing))
    assert decision(p, "PR1").reason == (
        "pull request not found in project web; CLEANUP_UNKNOWN_PR=keep"
    )


def test_a_pull_request_missing_from_the_states_is_kept():
    """A PR id the runner did not answer for is kept as a failed lookup."""
    p = plan_of(listing("web/api", manifest(d1, "PR1")), {})
    assert decision(p, "PR1").action is Action.KEEP
    assert decision(p, "PR1").pr_status is PullRequestStatus.UNKNOWN


def test_closed_without_a_date_is_kept_during_a_grace_period():
    """A closed PR with no closing date cannot prove its age: kept when a grace period is set."""
    pull = pr(1, "completed")
    pull = type(pull)(pull.id, pull.status, None)
    kept = plan_of(
        listing("r", manifest(d1, "PR1")), states(pull), policy=rules(grace=timedelta(1))
    )
    gone = plan_of(listing("r", manifest(d1, "PR1")), states(pull))
    assert decision(kept, "PR1", "r").action is Action.KEEP
    assert decision(gone, "PR1", "r").action is Action.DELETE


def test_non_pr_tags_are_not_decisions():
    """Tags that do not match the pattern are untouched and absent from the decisions."""
    p = plan_of(listing("web/api", manifest(d1, "latest", "v1.2")), {})
    assert list(p.decisions) == []
    assert p.tags_scanned == 2


def test_a_tag_shared_with_a_kept_tag_is_removed_alone():
    """A manifest with a kept tag stays; only the PR tag is deleted."""
    p = plan_of(listing("web/api", manifest(d1, "PR1", "latest")), states(pr(1, "completed")))
    assert step_targets(p) == [(StepKind.DELETE_TAG, "PR1")]
    assert decision(p, "PR1").deleted_by is StepKind.DELETE_TAG


def test_a_manifest_whose_tags_all_go_is_deleted():
    """When every tag of a manifest is deleted, the manifest is deleted and carries the tags."""
    p = plan_of(
        listing("web/api", manifest(d1, "PR1", "pr-2")),
        states(pr(1, "completed"), pr(2, "abandoned")),
    )
    assert [(s.kind, s.digest, s.tags) for s in p.steps] == [
        (StepKind.DELETE_MANIFEST, d1, ("PR1", "pr-2"))
    ]
    assert decision(p, "PR1").deleted_by is StepKind.DELETE_MANIFEST


def test_one_kept_pr_tag_keeps_the_manifest():
    """A manifest with one PR tag deleted and one kept (active PR) loses only the first tag."""
    p = plan_of(
        listing("web/api", manifest(d1, "PR1", "PR2")),
        states(pr(1, "completed"), pr(2, "active")),
    )
    assert step_targets(p) == [(StepKind.DELETE_TAG, "PR1")]


def test_delete_manifests_false_removes_tags_only():
    """CLEANUP_DELETE_MANIFESTS=false never deletes a manifest."""
    p = plan_of(
        listing("web/api", index(d1, "PR1", children=(d2,)), manifest(d2)),
        states(pr(1, "completed")),
        policy=rules(delete_manifests=False),
    )
    assert step_targets(p) == [(StepKind.DELETE_TAG, "PR1")]


def test_an_index_is_deleted_after_its_platform_manifests():
    """Deleting an index deletes its untagged platform manifests first; the index waits."""
    p = plan_of(
        listing("web/api", index(d1, "PR1", children=(d2, d3)), manifest(d2), manifest(d3)),
        states(pr(1, "completed")),
    )
    assert [(s.digest, s.after) for s in p.steps] == [(d2, ()), (d3, ()), (d1, (d2, d3))]
    assert p.manifests_deleted == 3


def test_a_platform_manifest_used_by_a_kept_index_stays():
    """A platform manifest shared with an index that stays is not deleted."""
    p = plan_of(
        listing(
            "web/api",
            index(d1, "PR1", children=(d2, d3)),
            index(d4, "latest", children=(d3,)),
            manifest(d2),
            manifest(d3),
        ),
        states(pr(1, "completed")),
    )
    assert [s.digest for s in p.steps] == [d2, d1]


def test_a_platform_manifest_used_by_an_untagged_index_stays():
    """An untagged index is not deleted, so the platform manifests it uses stay."""
    p = plan_of(
        listing(
            "web/api",
            index(d1, "PR1", children=(d2,)),
            index(d4, children=(d2,)),
            manifest(d2),
        ),
        states(pr(1, "completed")),
    )
    assert [s.digest for s in p.steps] == [d1]


def test_a_platform_manifest_with_its_own_kept_tag_stays():
    """A platform manifest that carries a tag of its own is not deleted with the index."""
    p = plan_of(
        listing("web/api", index(d1, "PR1", children=(d2,)), manifest(d2, "amd64")),
        states(pr(1, "completed")),
    )
    assert [s.digest for s in p.steps] == [d1]


def test_a_tagged_manifest_used_by_a_kept_index_loses_only_its_tag():
    """A manifest referenced by an index that stays is never deleted; its PR tag is."""
    p = plan_of(
        listing("web/api", index(d1, "latest", children=(d2,)), manifest(d2, "PR1")),
        states(pr(1, "completed")),
    )
    assert step_targets(p) == [(StepKind.DELETE_TAG, "PR1")]


def test_shared_platform_manifest_goes_before_both_indexes():
    """A platform manifest of two deleted indexes goes first; both indexes wait for it."""
    p = plan_of(
        listing(
            "web/api",
            index(d1, "PR1", children=(d3,)),
            index(d2, "PR2", children=(d3,)),
            manifest(d3),
        ),
        states(pr(1, "completed"), pr(2, "completed")),
    )
    assert [(s.digest, s.after) for s in p.steps] == [(d3, ()), (d1, (d3,)), (d2, (d3,))]


def test_referrers_are_deleted_before_their_subject():
    """A signature and its own referrer are deleted with the image, before it, in order."""
    p = plan_of(
        listing(
            "web/api",
            manifest(d1, "PR1"),
            manifest(d2, subject=d1),
            manifest(d3, subject=d2),
        ),
        states(pr(1, "completed")),
    )
    assert [(s.digest, s.after) for s in p.steps] == [(d3, ()), (d2, (d3,)), (d1, (d2,))]
    assert "attached to deleted manifest" in list(p.steps)[1].reason


def test_a_locked_referrer_keeps_its_subject_manifest():
    """A referrer that cannot be deleted keeps its subject; only the PR tag is removed."""
    p = plan_of(
        listing("web/api", manifest(d1, "PR1"), manifest(d2, subject=d1, locked=True)),
        states(pr(1, "completed")),
    )
    assert step_targets(p) == [(StepKind.DELETE_TAG, "PR1")]


def test_a_referrer_with_a_kept_tag_keeps_its_subject():
    """A referrer carrying a tag that stays is not deleted, so neither is its subject."""
    p = plan_of(
        listing("web/api", manifest(d1, "PR1"), manifest(d2, "sbom", subject=d1)),
        states(pr(1, "completed")),
    )
    assert step_targets(p) == [(StepKind.DELETE_TAG, "PR1")]


def test_referrers_of_a_kept_manifest_stay():
    """An untagged referrer of a manifest that stays is never deleted."""
    p = plan_of(
        listing("web/api", manifest(d1, "PR1", "latest"), manifest(d2, subject=d1)),
        states(pr(1, "completed")),
    )
    assert step_targets(p) == [(StepKind.DELETE_TAG, "PR1")]


def test_untagged_manifests_are_left_alone():
    """Manifests untagged before the run, and not attached to a deleted one, stay."""
    p = plan_of(
        listing("web/api", manifest(d1, "PR1"), manifest(d2), index(d3, children=(d4,))),
        states(pr(1, "completed")),
    )
    assert [s.digest for s in p.steps] == [d1]


def test_a_locked_tag_is_kept_and_reported():
    """A tag with deleteEnabled false is kept, marked locked, with its reason."""
    p = plan_of(
        listing("web/api", manifest(d1, "PR1"), tag("PR1", digest=d1, locked=True)),
        states(pr(1, "completed")),
    )
    kept = decision(p, "PR1")
    assert (kept.action, kept.locked, kept.reason) == (
        Action.KEEP,
        True,
        "tag is locked (deleteEnabled false)",
    )
    assert list(p.steps) == []


def test_a_locked_manifest_keeps_its_tags():
    """A manifest with deleteEnabled false keeps itself and its PR tags."""
    p = plan_of(listing("web/api", manifest(d1, "PR1", locked=True)), states(pr(1, "completed")))
    assert (decision(p, "PR1").action, decision(p, "PR1").reason) == (
        Action.KEEP,
        "manifest is locked",
    )
    assert list(p.steps) == []


def test_a_locked_platform_manifest_stays_while_its_index_goes():
    """A locked platform manifest is not deleted; the index above it still is."""
    p = plan_of(
        listing(
            "web/api", index(d1, "PR1", children=(d2, d3)), manifest(d2, locked=True), manifest(d3)
        ),
        states(pr(1, "completed")),
    )
    assert [s.digest for s in p.steps] == [d3, d1]


def test_locks_do_not_hide_a_keeping_pull_request():
    """A locked tag of an active pull request says the pull request is active, not locked."""
    p = plan_of(
        listing("web/api", manifest(d1, "PR1"), tag("PR1", digest=d1, locked=True)),
        states(pr(1, "active")),
    )
    assert (decision(p, "PR1").reason, decision(p, "PR1").locked) == ("pull request active", False)


def test_an_incomplete_listing_deletes_nothing():
    """Every PR tag of an incomplete listing is kept with the listing's error."""
    p = plan_of(
        listing("web/api", manifest(d1, "PR1"), complete=False, error="HTTP 500 on page 3"),
        states(pr(1, "completed")),
    )
    assert list(p.steps) == []
    assert decision(p, "PR1").reason == "repository listing incomplete: HTTP 500 on page 3"


def test_a_tag_without_a_listed_manifest_is_deleted_as_a_tag():
    """A tag whose manifest is missing from the listing can still be untagged, never more."""
    p = plan_of(listing("web/api", tag("PR1", digest=d5)), states(pr(1, "completed")))
    assert step_targets(p) == [(StepKind.DELETE_TAG, "PR1")]


def test_a_reference_cycle_deletes_no_manifest_on_it():
    """Malformed data (an index cycle) keeps the manifests on the cycle; tags still go."""
    p = plan_of(
        listing("web/api", index(d1, "PR1", children=(d2,)), index(d2, "PR2", children=(d1,))),
        states(pr(1, "completed"), pr(2, "completed")),
    )
    assert sorted(step_targets(p)) == [(StepKind.DELETE_TAG, "PR1"), (StepKind.DELETE_TAG, "PR2")]


def test_decisions_carry_everything_the_report_needs():
    """A decision names repository, tag, digest, PR id and status, action, reason, how."""
    p = plan_of(
        listing("web/api", manifest(d6, "PR7")), states(pr(7, "completed", closed="2026-11-30"))
    )
    d = decision(p, "PR7")
    assert (d.repository, d.tag, d.digest, d.pr_id, d.pr_status, d.action, d.deleted_by) == (
        "web/api",
        "PR7",
        d6,
        7,
        PullRequestStatus.COMPLETED,
        Action.DELETE,
        StepKind.DELETE_MANIFEST,
    )


def test_the_cap_counts_deleted_tags_not_manifests():
    """tags_deleted counts PR tags deleted; exceeds_cap is strictly more than the cap."""
    p = plan_of(
        listing("web/api", manifest(d1, "PR1", "PR2"), manifest(d2, "PR3", "latest")),
        states(pr(1, "completed"), pr(2, "completed"), pr(3, "completed")),
    )
    assert (p.tags_deleted, p.manifests_deleted) == (3, 1)
    assert (p.exceeds_cap(3), p.exceeds_cap(2), p.exceeds_cap(0)) == (False, True, True)


def test_plan_accepts_settings():
    """plan() reads its rules straight from Settings too."""
    settings = load_settings(environment(CLEANUP_UNKNOWN_PR="delete"))
    p = plan([listing("r", manifest(d1, "PR1"))], states(pr(1, "notFound")), NOW, settings)
    assert decision(p, "PR1", "r").action is Action.DELETE
    assert PolicyRules.from_settings(settings).unknown_pr.value == "delete"


def test_repositories_and_decisions_are_sorted():
    """Plans list repositories by name and decisions by tag, whatever the listing order."""
    p = plan_of(
        [listing("b", manifest(d1, "PR2", "PR1")), listing("a", manifest(d1, "PR3"))],
        states(pr(1, "active"), pr(2, "active"), pr(3, "active")),
    )
    assert [(d.repository, d.tag) for d in p.decisions] == [
        ("a", "PR3"),
        ("b", "PR1"),
        ("b", "PR2"),
    ]


def test_lookup_failures_are_listed_once_each():
    """A failed lookup shared by many tags is one failure in the plan."""
    p = plan_of(
        [listing("a", manifest(d1, "PR1")), listing("b", manifest(d1, "pr-1"))],
        states(pr(1, "unknown")),
    )
    assert [f.id for f in p.lookup_failures] == [1]


def test_a_plan_at_scale_runs():
    """100,000 tags in 1,000 repositories plan correctly (timing is measured, not asserted)."""
    listings = []
    pulls = {}
    for r in range(1000):
        items = []
        for i in range(50):
            n = r * 50 + i + 1
            child = digest(10_000_000 + n)
            items.append(index(digest(n), f"PR{n}", f"pr-{n}", children=(child,)))
            items.append(manifest(child))
            pulls[n] = pr(n, "completed" if n % 2 else "active")
        listings.append(listing(f"team{r}/app", *items))
    started = time.process_time()
    p = plan_of(listings, pulls)
    elapsed = time.process_time() - started
    assert p.tags_scanned == 100_000
    assert p.tags_deleted == 50_000
    assert p.manifests_deleted == 50_000
    print(f"planned 100,000 tags in {elapsed:.3f} s CPU")  # noqa: T201 -- the figure for the report
