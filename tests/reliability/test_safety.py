"""Safety: the cap stops a run before its first deletion; a listing that broke off deletes
nothing in its repository; and what a half-done deletion of an index leaves behind."""

from __future__ import annotations

import pytest

from cleanup.engine import run
from emulators.harness import FaultRule
from emulators.scenario import ImageSeed, Scenario
from tests.reliability.conftest import FAST, Emulate, settings_for, snapshot
from tests.reliability.scenarios import closed, fault_free, small_registry

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("dry_run", ["false", "true"])
async def test_the_cap_stops_the_run_before_the_first_deletion(emulate: Emulate, dry_run: str):
    """A plan over CLEANUP_MAX_DELETIONS: exit 3, not one DELETE sent, the registry unchanged."""
    emulators = emulate(small_registry())
    before = snapshot(emulators)
    settings = settings_for(emulators, CLEANUP_MAX_DELETIONS="2", CLEANUP_DRY_RUN=dry_run)
    report = await run(settings, tuning=FAST)
    assert report.exit_code == 3
    assert "CLEANUP_MAX_DELETIONS=2" in report.render_text()
    assert emulators.log.count(service="acr", method="DELETE") == 0
    assert snapshot(emulators) == before


def with_a_long_repository() -> Scenario:
    """small_registry() plus `big`: 105 closed pull-request tags, more than one page."""
    base = small_registry()
    big = tuple(ImageSeed("big", (f"PR{n}",), salt=f"big-{n}") for n in range(100, 205))
    pulls = tuple(closed(n) for n in range(100, 205))
    return Scenario(images=base.images + big, pull_requests=base.pull_requests + pulls)


@pytest.mark.parametrize("kind", ["status", "drop", "malformed"])
async def test_a_tag_listing_that_broke_off_deletes_nothing_there(emulate: Emulate, kind: str):
    """The second page of a repository's tags fails for good: nothing in it is deleted, the
    other repositories are cleaned, exit 1; the next run finishes the work."""
    scenario = with_a_long_repository()
    expected = await fault_free(emulate, scenario, CLEANUP_MAX_DELETIONS="1000")
    emulators = emulate(scenario)
    before = snapshot(emulators)
    emulators.acr.knobs.faults.add(
        FaultRule(route="acr.tags.list", kind=kind, path_contains="last=")  # type: ignore[arg-type]
    )
    report = await run(settings_for(emulators), tuning=FAST)
    assert report.exit_code == 1
    assert emulators.acr.knobs.faults.injected >= 1
    after = snapshot(emulators)
    assert {k: d for k, d in after.tags.items() if k[0] == "big"} == {
        k: d for k, d in before.tags.items() if k[0] == "big"
    }
    assert emulators.log.count(service="acr", method="DELETE") > 0
    assert {k: d for k, d in after.tags.items() if k[0] != "big"} == {
        k: d for k, d in expected.tags.items() if k[0] != "big"
    }
    emulators.acr.knobs.faults.clear()
    assert (await run(settings_for(emulators), tuning=FAST)).exit_code == 0
    assert snapshot(emulators) == expected


async def test_a_manifest_listing_that_broke_off_deletes_nothing_there(emulate: Emulate):
    """The manifests of one repository cannot be listed: its tags all stay."""
    emulators = emulate(small_registry())
    before = snapshot(emulators)
    emulators.acr.knobs.faults.add(
        FaultRule(route="acr.manifests.list", status=500, path_contains="team%2Fapi/")
    )
    report = await run(settings_for(emulators), tuning=FAST)
    assert report.exit_code == 1
    after = snapshot(emulators)
    api = {k: d for k, d in before.tags.items() if k[0] == "team/api"}
    assert {k: d for k, d in after.tags.items() if k[0] == "team/api"} == api
    assert not after.tags.keys() >= before.tags.keys()  # team/web was cleaned


async def test_a_platform_manifest_whose_deletion_failed_goes_in_the_next_run(
    emulate: Emulate,
):
    """A platform manifest of a closed PR's index cannot be deleted: the index keeps its tag,
    and the next run deletes both."""
    scenario = Scenario(
        images=(ImageSeed("team/api", ("PR3",), platforms=("linux/amd64", "linux/arm64")),),
        pull_requests=(closed(3),),
    )
    expected = await fault_free(emulate, scenario)
    emulators = emulate(scenario)
    index = emulators.acr.state.manifest("team/api", "PR3")
    child = index.references[0].digest
    emulators.acr.knobs.faults.add(
        FaultRule(route="acr.manifest.delete", status=500, path_contains=child)
    )
    assert (await run(settings_for(emulators), tuning=FAST)).exit_code == 1
    emulators.acr.knobs.faults.clear()
    await run(settings_for(emulators), tuning=FAST)
    assert snapshot(emulators) == expected
