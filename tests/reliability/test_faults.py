"""The fault suite: each misbehaviour of the registry or Azure DevOps, injected through the
emulators' knobs, and the registry the run leaves behind compared with a fault-free run's."""

from __future__ import annotations

import asyncio

import pytest

from cleanup.engine import run
from emulators.acr import AcrKnobs
from emulators.harness import FaultRule
from tests.reliability.conftest import FAST, Emulate, settings_for, snapshot
from tests.reliability.scenarios import fault_free, small_registry

pytestmark = pytest.mark.integration


ONE_BY_ONE = {"AZURE_DEVOPS_PROJECT": None}
"""Organization-wide: every pull request is looked up on its own (no project listing)."""


async def faulty_run(
    emulate: Emulate,
    *acr: FaultRule,
    devops: tuple[FaultRule, ...] = (),
    settings: dict[str, str | None] | None = None,
):
    """(report, final snapshot, emulators) of one run of small_registry() with these faults."""
    emulators = emulate(small_registry())
    for rule in acr:
        emulators.acr.knobs.faults.add(rule)
    for rule in devops:
        emulators.devops.knobs.faults.add(rule)
    report = await run(settings_for(emulators, **(settings or {})), tuning=FAST)
    return report, snapshot(emulators), emulators


async def test_acr_429_bursts_are_waited_out_honouring_retry_after(emulate: Emulate):
    """Bursts of 429 with Retry-After on listings and deletions: the run still finishes all."""
    expected = await fault_free(emulate, small_registry())
    report, after, emulators = await faulty_run(
        emulate,
        FaultRule(route="acr.tags.list", status=429, retry_after=0.05, times=4),
        FaultRule(route="acr.*.delete", status=429, retry_after=0.05, times=6),
    )
    assert report.exit_code == 0, report.render_text()
    assert after == expected
    assert emulators.log.count(service="acr", status=429) == 10


async def test_devops_429_bursts_are_waited_out_honouring_retry_after(emulate: Emulate):
    """429 with Retry-After on the listing and single lookups: every lookup still answers."""
    expected = await fault_free(emulate, small_registry())
    report, after, emulators = await faulty_run(
        emulate,
        devops=(
            FaultRule(route="devops.pr.list", status=429, retry_after=0.05, times=2),
            FaultRule(route="devops.pr.get", status=429, retry_after=0.05, times=3),
        ),
    )
    assert report.exit_code == 0, report.render_text()
    assert after == expected
    assert emulators.log.count(service="devops", status=429) == 5


async def test_5xx_on_some_routes_and_items_are_retried(emulate: Emulate):
    """500/502/503 on one repository's listing, some deletions and one pull request: retried."""
    expected = await fault_free(emulate, small_registry(), **ONE_BY_ONE)
    report, after, emulators = await faulty_run(
        emulate,
        FaultRule(route="acr.tags.list", path_contains="web", status=500, times=2),
        FaultRule(route="acr.manifests.list", status=502, times=1),
        FaultRule(route="acr.manifest.delete", status=503, times=2),
        FaultRule(route="acr.manifest.get", status=500, times=1),
        devops=(FaultRule(route="devops.pr.get*", path_contains="/pullrequests/5?", times=2),),
        settings=ONE_BY_ONE,
    )
    assert report.exit_code == 0, report.render_text()
    assert after == expected
    assert emulators.acr.knobs.faults.injected == 6
    assert emulators.devops.knobs.faults.injected == 2


@pytest.mark.parametrize(
    "route",
    ["acr.tags.list", "acr.manifests.list", "acr.tag.delete", "acr.manifest.delete", "acr.catalog"],
)
async def test_dropped_registry_connections_are_retried(emulate: Emulate, route: str):
    """A registry that closes the connection without answering, once per route: retried."""
    expected = await fault_free(emulate, small_registry())
    report, after, emulators = await faulty_run(
        emulate, FaultRule(route=route, kind="drop", times=2)
    )
    assert report.exit_code == 0, report.render_text()
    assert after == expected
    assert emulators.acr.knobs.faults.injected >= 1


async def test_a_dropped_token_request_is_retried(emulate: Emulate):
    """The registry's token endpoints dropping a connection do not stop the run."""
    expected = await fault_free(emulate, small_registry())
    report, after, emulators = await faulty_run(
        emulate,
        FaultRule(route="acr.oauth2.exchange", kind="drop", times=1),
        FaultRule(route="acr.oauth2.token", kind="drop", times=1),
    )
    assert report.exit_code == 0, report.render_text()
    assert after == expected
    assert emulators.acr.knobs.faults.injected == 2


@pytest.mark.parametrize(
    ("rule", "overrides"),
    [
        (FaultRule(route="devops.pr.list", kind="drop", times=1), {}),
        (FaultRule(route="devops.pr.get*", kind="drop", times=3), ONE_BY_ONE),
    ],
    ids=["project-listing", "one-by-one-lookups"],
)
async def test_dropped_devops_connections_are_retried(emulate: Emulate, rule, overrides):
    """Azure DevOps closing connections on the listing or on lookups: retried, all answered."""
    expected = await fault_free(emulate, small_registry(), **overrides)
    report, after, emulators = await faulty_run(emulate, devops=(rule,), settings=overrides)
    assert report.exit_code == 0, report.render_text()
    assert after == expected
    assert emulators.devops.knobs.faults.injected == rule.times


async def test_responses_slower_than_the_timeout_are_retried(emulate: Emulate):
    """A listing or lookup that answers only after the client timeout is retried."""
    expected = await fault_free(emulate, small_registry())
    slow = FAST.registry_timeout_s * 6
    report, after, emulators = await faulty_run(
        emulate,
        FaultRule(route="acr.tags.list", kind="slow", delay_s=slow, times=1),
        FaultRule(route="acr.manifest.get", kind="slow", delay_s=slow, times=1),
        devops=(FaultRule(route="devops.pr.get", kind="slow", delay_s=slow, times=1),),
    )
    assert report.exit_code == 0, report.render_text()
    assert after == expected
    assert emulators.acr.knobs.faults.injected == 2
    assert emulators.devops.knobs.faults.injected == 1


async def test_malformed_json_from_azure_devops_is_retried(emulate: Emulate):
    """A truncated JSON body from Azure DevOps is retried like a 5xx."""
    expected = await fault_free(emulate, small_registry())
    report, after, _ = await faulty_run(
        emulate,
        devops=(
            FaultRule(route="devops.pr.list", kind="malformed", times=1),
            FaultRule(route="devops.pr.get", kind="malformed", times=2),
        ),
    )
    assert report.exit_code == 0, report.render_text()
    assert after == expected


async def test_a_malformed_tag_listing_keeps_that_repository_and_the_next_run_finishes(
    emulate: Emulate,
):
    """Malformed JSON in one repository's tags: nothing there is deleted, the rest is, exit 1;
    the next run deletes what was left."""
    expected = await fault_free(emulate, small_registry())
    emulators = emulate(small_registry())
    before = snapshot(emulators)
    emulators.acr.knobs.faults.add(
        FaultRule(route="acr.tags.list", kind="malformed", path_contains="web", times=1)
    )
    report = await run(settings_for(emulators), tuning=FAST)
    assert report.exit_code == 1
    after = snapshot(emulators)
    web = {key: digest for key, digest in before.tags.items() if key[0] == "team/web"}
    assert {key: d for key, d in after.tags.items() if key[0] == "team/web"} == web
    assert {k: d for k, d in after.tags.items() if k[0] != "team/web"} == {
        k: d for k, d in expected.tags.items() if k[0] != "team/web"
    }
    second = await run(settings_for(emulators), tuning=FAST)
    assert second.exit_code == 0
    assert snapshot(emulators) == expected


@pytest.mark.parametrize("skip", [0, 1])
async def test_the_devops_sign_in_page_stops_the_run_before_any_deletion(
    emulate: Emulate, skip: int
):
    """Azure DevOps answering 203 (its sign-in page), first or mid-run: exit 3, nothing deleted."""
    emulators = emulate(small_registry())
    before = snapshot(emulators)
    # First: the project's listing; mid-run: the second of the one-by-one lookups.
    route, overrides = ("devops.pr.list", {}) if skip == 0 else ("devops.pr.get*", ONE_BY_ONE)
    emulators.devops.knobs.faults.add(FaultRule(route=route, status=203, skip=skip))
    report = await run(settings_for(emulators, **overrides), tuning=FAST)
    assert report.exit_code == 3
    assert emulators.devops.knobs.faults.injected >= 1
    assert emulators.log.count(service="acr", method="DELETE") == 0
    assert snapshot(emulators) == before


async def test_a_pull_request_that_fails_forever_keeps_its_tags_and_the_rest_is_done(
    emulate: Emulate,
):
    """Every lookup of PR5 fails: its tag stays, the run exits 1, everything else is done."""
    expected = await fault_free(emulate, small_registry(), **ONE_BY_ONE)
    report, after, emulators = await faulty_run(
        emulate,
        devops=(FaultRule(route="devops.pr.get*", path_contains="/pullrequests/5?"),),
        settings=ONE_BY_ONE,
    )
    assert report.exit_code == 1
    digest = emulators.acr.state.resolve("team/web", "PR5")
    assert after.tags == {**expected.tags, ("team/web", "PR5"): digest}
    assert after.manifests == expected.manifests | {("team/web", digest)}
    body = report.to_dict()
    assert [e["scope"] for e in body["errors"]] == ["pullRequest:5"]


async def test_an_access_token_expiring_mid_run_is_renewed(emulate: Emulate):
    """ACR access tokens that live 3 s over a run of more than 3 s are renewed; exit 0."""
    expected = await fault_free(emulate, small_registry())
    knobs = AcrKnobs(access_token_lifetime_s=3.0, latency_ms=200)
    emulators = emulate(small_registry(), acr_knobs=knobs)
    settings = settings_for(emulators, CLEANUP_CONCURRENCY="1")
    report = await run(settings, tuning=FAST)
    assert report.exit_code == 0, report.render_text()
    assert snapshot(emulators) == expected
    # more than 16 requests at >= 200 ms each, one at a time: longer than a token lives
    assert emulators.log.count(service="acr") > 16
    assert emulators.log.count(service="acr", route="acr.oauth2.token") >= 2


async def test_a_refresh_token_expiring_mid_run_is_renewed(emulate: Emulate):
    """ACR refresh tokens that live 3 s over a longer run are exchanged again; exit 0."""
    expected = await fault_free(emulate, small_registry())
    knobs = AcrKnobs(access_token_lifetime_s=2.5, refresh_token_lifetime_s=3.0, latency_ms=200)
    emulators = emulate(small_registry(), acr_knobs=knobs)
    report = await run(settings_for(emulators, CLEANUP_CONCURRENCY="1"), tuning=FAST)
    assert report.exit_code == 0, report.render_text()
    assert snapshot(emulators) == expected
    assert emulators.log.count(service="acr") > 16
    assert emulators.log.count(service="acr", route="acr.oauth2.exchange") >= 2


async def test_tokens_revoked_mid_run_are_replaced_without_failing(emulate: Emulate):
    """Every ACR token refused after the first deletion (as if expired early): renewed, exit 0."""
    expected = await fault_free(emulate, small_registry())
    emulators = emulate(small_registry(), acr_knobs=AcrKnobs(latency_ms=40))
    task = asyncio.create_task(run(settings_for(emulators, CLEANUP_CONCURRENCY="1"), tuning=FAST))
    # The emulator's request log has no event to wait on: poll it.
    while emulators.log.count(service="acr", method="DELETE") == 0 and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.002)
    emulators.acr.knobs.revoke_tokens()
    report = await task
    assert report.exit_code == 0, report.render_text()
    assert snapshot(emulators) == expected
    assert emulators.log.count(service="acr", route="acr.oauth2.exchange") == 2
    assert emulators.log.count(service="acr", status=401, method="DELETE") >= 1


@pytest.mark.parametrize(
    ("kind", "status"), [("malformed", 200), ("status", 500), ("status", 404), ("drop", 0)]
)
async def test_a_catalog_that_cannot_be_read_stops_the_run_with_exit_3(
    emulate: Emulate, kind: str, status: int
):
    """The repository list failing for good (bad JSON, 5xx, 404, drops) stops the run with
    exit 3 and a report, not a crash; nothing is deleted."""
    emulators = emulate(small_registry())
    before = snapshot(emulators)
    emulators.acr.knobs.faults.add(FaultRule(route="acr.catalog", kind=kind, status=status))  # type: ignore[arg-type]
    report = await run(settings_for(emulators), tuning=FAST)
    assert report.exit_code == 3
    assert [e["scope"] for e in report.to_dict()["errors"]] == ["run"]
    assert emulators.log.count(service="acr", method="DELETE") == 0
    assert snapshot(emulators) == before
