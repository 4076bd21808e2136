"""The runner's order and bookkeeping, over in-memory fakes of the registry and Azure DevOps."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from cleanup.errors import LockedError, RegistryOperationError
from cleanup.model import RepositoryListing
from cleanup.policy import RepositoryPlan, Step, StepKind
from cleanup.report import Outcome, build_report
from cleanup.runner import execute, for_each, run_cleanup
from cleanup.settings import load_settings
from tests.builders import NOW, d1, d2, d3, d4, environment, index, listing, manifest, pr
from tests.fakes import FakePullRequests, FakeRegistry


def settings(**overrides: str):
    return load_settings(environment(**overrides))


def clock():
    return NOW


async def test_deletes_tags_of_closed_pull_requests_and_keeps_the_rest():
    """A completed pull request's image goes; an active one's and a release tag stay."""
    registry = FakeRegistry.of(
        listing("web/api", manifest(d1, "PR1"), manifest(d2, "PR2"), manifest(d3, "v1.0"))
    )
    pulls = FakePullRequests.of([pr(1, "completed"), pr(2, "active")])
    result = await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.digests("web/api") == {d2, d3}
    assert result.stopped is None
    assert result.executed


async def test_each_pull_request_is_looked_up_once_across_repositories():
    """Tags of the same pull request in many repositories cost one lookup."""
    registry = FakeRegistry.of(
        listing("a", manifest(d1, "PR7")),
        listing("b", manifest(d1, "pr-7")),
        listing("c", manifest(d1, "PR7", "PR8")),
    )
    pulls = FakePullRequests.of([pr(7, "active"), pr(8, "active")])
    await run_cleanup(settings(), registry, pulls, clock=clock)
    assert sorted(pulls.looked_up) == [7, 8]


async def test_dry_run_deletes_nothing_but_plans_everything():
    """A dry run leaves the registry as it was and still carries the plan."""
    registry = FakeRegistry.of(listing("web/api", manifest(d1, "PR1")))
    pulls = FakePullRequests.of([pr(1, "abandoned")])
    result = await run_cleanup(settings(CLEANUP_DRY_RUN="true"), registry, pulls, clock=clock)
    assert registry.digests("web/api") == {d1}
    assert result.plan is not None
    assert result.plan.tags_deleted == 1
    assert not result.executed


async def test_refused_devops_credential_stops_before_any_deletion():
    """An authentication failure in Azure DevOps stops the run; nothing is deleted."""
    registry = FakeRegistry.of(listing("web/api", manifest(d1, "PR1")))
    pulls = FakePullRequests.of([pr(1, "completed")])
    pulls.refuse = True
    result = await run_cleanup(settings(), registry, pulls, clock=clock)
    assert result.stopped is not None
    assert "refused the credential" in result.stopped
    assert not any(c.startswith("delete") for c in registry.calls)


async def test_plan_over_the_cap_deletes_nothing():
    """More planned tag deletions than CLEANUP_MAX_DELETIONS stops the run untouched."""
    registry = FakeRegistry.of(listing("web/api", manifest(d1, "PR1"), manifest(d2, "PR2")))
    pulls = FakePullRequests.of([pr(1, "completed"), pr(2, "completed")])
    result = await run_cleanup(settings(CLEANUP_MAX_DELETIONS="1"), registry, pulls, clock=clock)
    assert result.stopped is not None
    assert "CLEANUP_MAX_DELETIONS=1" in result.stopped
    assert registry.digests("web/api") == {d1, d2}
    assert not any(c.startswith(("delete", "manifests")) for c in registry.calls)
    assert result.plan is not None
    assert result.plan.tags_deleted == 2


async def test_failed_lookup_keeps_tags_and_is_reported_as_an_error():
    """A lookup that failed keeps its tags; the run goes on with the others."""
    registry = FakeRegistry.of(listing("web/api", manifest(d1, "PR1"), manifest(d2, "PR2")))
    pulls = FakePullRequests.of([pr(1, "completed"), pr(2, "completed")])
    pulls.failing = {2}
    result = await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.digests("web/api") == {d2}
    assert result.plan is not None
    assert [p.id for p in result.plan.lookup_failures] == [2]


async def test_repositories_outside_the_filter_are_not_listed():
    """CLEANUP_REPOSITORIES limits which repositories are read at all."""
    registry = FakeRegistry.of(
        listing("team/a", manifest(d1, "PR1")), listing("other", manifest(d1, "PR1"))
    )
    pulls = FakePullRequests.of([pr(1, "completed")])
    await run_cleanup(settings(CLEANUP_REPOSITORIES="team/*"), registry, pulls, clock=clock)
    assert "list other" not in registry.calls
    assert registry.digests("other") == {d1}


async def test_failed_platform_manifest_deletion_keeps_its_index_for_the_next_run():
    """A platform manifest that cannot be deleted keeps its index and tag; the next run ends it."""
    registry = FakeRegistry.of(
        listing("web/api", index(d1, "PR1", children=(d2, d3)), manifest(d2), manifest(d3))
    )
    registry.failing = {f"web/api@{d2}"}
    pulls = FakePullRequests.of([pr(1, "completed")])
    result = await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.digests("web/api") == {d1, d2}
    assert registry.tags("web/api") == {"PR1"}
    statuses = {step.digest: r.outcome for step, r in result.results.items()}
    assert statuses == {d2: Outcome.FAILED, d3: Outcome.DONE, d1: Outcome.SKIPPED}
    registry.failing = set()
    await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.digests("web/api") == set()


async def test_failed_index_deletion_is_retried_by_the_next_run():
    """An index whose own deletion failed keeps its tag, so the next run deletes it."""
    registry = FakeRegistry.of(listing("web/api", index(d1, "PR1", children=(d2,)), manifest(d2)))
    registry.failing = {f"web/api@{d1}"}
    pulls = FakePullRequests.of([pr(1, "completed")])
    await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.tags("web/api") == {"PR1"}
    registry.failing = set()
    await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.digests("web/api") == set()


async def test_step_waiting_for_an_unplanned_manifest_is_skipped():
    """A step whose parent is not in the plan is never attempted."""
    registry = FakeRegistry.of(listing("web/api", manifest(d4)))
    orphan = Step(StepKind.DELETE_MANIFEST, "web/api", d4, after=(d1,))
    outcomes = await execute([RepositoryPlan("web/api", 1, (), (orphan,))], registry, concurrency=4)
    assert outcomes[orphan].outcome is Outcome.SKIPPED
    assert registry.digests("web/api") == {d4}


@pytest.mark.parametrize("limit", [1, 3, 50])
async def test_for_each_visits_every_item_once_within_the_limit(limit):
    """for_each applies the work to every item, never more than `limit` at once."""
    seen: list[int] = []
    in_flight = 0
    peak = 0

    async def work(item: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        seen.append(item)
        in_flight -= 1

    await for_each(range(20), work, limit)
    assert sorted(seen) == list(range(20))
    assert peak <= limit


class ChangingRegistry(FakeRegistry):
    """A registry someone changes between the plan and the deletions."""

    change: Callable[[FakeRegistry], None] | None = None

    async def list_manifests(self, repository: str):
        if self.change is not None:
            self.change(self)
            self.change = None
        return await super().list_manifests(repository)


def retag(repository: str, digest: str, tag: str) -> Callable[[FakeRegistry], None]:
    def change(registry: FakeRegistry) -> None:
        listing = registry.listings[repository]
        manifests = tuple(
            dataclasses.replace(m, tags=(*m.tags, tag)) if m.digest == digest else m
            for m in listing.manifests
        )
        registry.listings[repository] = RepositoryListing(repository, listing.tags, manifests)

    return change


async def test_a_manifest_tagged_after_the_plan_keeps_its_new_tag():
    """A release tag put on a pull request's image during the run survives; the PR tag goes."""
    registry = ChangingRegistry.of(listing("web/api", manifest(d1, "PR1")))
    registry.change = retag("web/api", d1, "v1.0")
    pulls = FakePullRequests.of([pr(1, "completed")])
    result = await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.tags("web/api") == {"v1.0"}
    assert f"delete web/api@{d1}" not in registry.calls
    [(_, outcome)] = result.results.items()
    assert outcome.outcome is Outcome.TAGS_ONLY


async def test_tags_deleted_before_a_tags_only_step_failed_are_reported_deleted():
    """The manifest stays (retagged since the plan); of its two pull-request tags the first
    goes and the second fails: the report says so tag by tag, not both failed."""
    registry = ChangingRegistry.of(listing("web/api", manifest(d1, "PR1", "PR2")))
    registry.change = retag("web/api", d1, "v1.0")
    registry.failing = {"web/api:PR2"}
    pulls = FakePullRequests.of([pr(1, "completed"), pr(2, "completed")])
    result = await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.tags("web/api") == {"PR2", "v1.0"}
    [(_, outcome)] = result.results.items()
    assert (outcome.outcome, outcome.tags_deleted) == (Outcome.FAILED, ("PR1",))
    report = build_report(
        result.plan,
        result.results.values(),
        run_id="r",
        registry="x",
        dry_run=False,
        started_at=NOW,
        finished_at=NOW,
    )
    assert {a.tag: a.action for a in report.actions} == {"PR1": "delete", "PR2": "failed"}
    assert (report.summary.deleted, report.summary.failed) == (1, 1)


async def test_a_platform_manifest_used_by_a_new_index_stays():
    """An index pushed during the run that uses a planned child keeps that child."""
    registry = ChangingRegistry.of(
        listing("web/api", index(d1, "PR1", children=(d2,)), manifest(d2))
    )

    def push_index(fake: FakeRegistry) -> None:
        old = fake.listings["web/api"]
        fake.listings["web/api"] = RepositoryListing(
            "web/api", old.tags, (*old.manifests, index(d3, children=(d2,)))
        )

    registry.change = push_index
    pulls = FakePullRequests.of([pr(1, "completed")])
    result = await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.digests("web/api") == {d2, d3}
    statuses = {step.digest: r.outcome for step, r in result.results.items()}
    assert statuses == {d1: Outcome.DONE, d2: Outcome.KEPT}


class UnreadableRegistry(FakeRegistry):
    async def list_manifests(self, repository: str):
        raise RegistryOperationError("listing the manifests of web/api: HTTP 503")


async def test_no_manifest_is_deleted_when_the_repository_cannot_be_re_read():
    """If the re-read before deleting fails, manifests stay and the run reports a failure."""
    registry = UnreadableRegistry.of(listing("web/api", manifest(d1, "PR1")))
    pulls = FakePullRequests.of([pr(1, "completed")])
    result = await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.digests("web/api") == {d1}
    assert not any(c.startswith("delete") for c in registry.calls)
    [(_, outcome)] = result.results.items()
    assert outcome.outcome is Outcome.SKIPPED


class BrokenRereadRegistry(FakeRegistry):
    async def list_manifests(self, repository: str):
        raise KeyError("digest")


async def test_an_unexpected_error_in_the_re_read_keeps_every_manifest():
    """Whatever breaks the re-read, the repository's manifests stay; tag deletions go on."""
    registry = BrokenRereadRegistry.of(
        listing("web/api", manifest(d1, "PR1"), manifest(d2, "PR2", "latest"))
    )
    pulls = FakePullRequests.of([pr(1, "completed"), pr(2, "completed")])
    result = await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.digests("web/api") == {d1, d2}
    assert registry.tags("web/api") == {"PR1", "latest"}
    outcomes = {step.digest: r.outcome for step, r in result.results.items()}
    assert outcomes == {d1: Outcome.SKIPPED, d2: Outcome.DONE}


class LocksAtDeletion(FakeRegistry):
    """The registry refuses one manifest as locked, though the re-read showed it unlocked."""

    locked_now: str = ""

    async def delete_manifest(self, repository: str, digest: str) -> None:
        if digest == self.locked_now:
            self.calls.append(f"delete {repository}@{digest}")
            raise LockedError(f"{repository}@{digest} is locked")
        await super().delete_manifest(repository, digest)


async def test_a_signature_found_locked_at_deletion_keeps_its_image():
    """A referrer refused as locked only when deleted holds its subject, which keeps its tag."""
    registry = LocksAtDeletion.of(listing("web/api", manifest(d1, "PR1"), manifest(d2, subject=d1)))
    registry.locked_now = d2
    pulls = FakePullRequests.of([pr(1, "completed")])
    result = await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.digests("web/api") == {d1, d2}
    assert registry.tags("web/api") == {"PR1"}
    outcomes = {step.digest: r.outcome for step, r in result.results.items()}
    assert outcomes == {d2: Outcome.LOCKED, d1: Outcome.SKIPPED}


async def test_a_platform_manifest_tagged_since_lets_its_index_go():
    """A platform manifest tagged after the plan keeps its manifest; the old index still goes."""
    registry = ChangingRegistry.of(
        listing("web/api", index(d1, "PR1", children=(d2,)), manifest(d2, "PR2"))
    )
    registry.change = retag("web/api", d2, "v1")
    pulls = FakePullRequests.of([pr(1, "completed"), pr(2, "completed")])
    result = await run_cleanup(settings(), registry, pulls, clock=clock)
    assert registry.digests("web/api") == {d2}
    assert registry.tags("web/api") == {"v1"}
    outcomes = {step.digest: r.outcome for step, r in result.results.items()}
    assert outcomes == {d2: Outcome.TAGS_ONLY, d1: Outcome.DONE}
