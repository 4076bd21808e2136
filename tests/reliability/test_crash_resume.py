"""Crash and resume: `python -m cleanup` killed with SIGKILL while it deletes leaves a registry
from which the next run finishes the work. (The Function App's side, the run store marking the
dead run unfinished and freeing the lock, is tests/functions/test_run_store.py.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from cleanup.engine import run
from emulators.harness import FaultRule
from emulators.scenario import ImageSeed, Scenario
from tests.reliability.conftest import (
    FAST,
    ROOT,
    Emulate,
    cli_environment,
    settings_for,
    snapshot,
)
from tests.reliability.scenarios import closed

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def plain_images() -> Scenario:
    """Twelve closed pull requests' images in two repositories, and tags that stay."""
    images = [ImageSeed(f"team/r{n % 2}", (f"PR{n}",)) for n in range(1, 13)]
    images += [ImageSeed("team/r0", ("latest",)), ImageSeed("team/r1", ("v1",))]
    return Scenario(images=tuple(images), pull_requests=tuple(closed(n) for n in range(1, 13)))


async def test_a_run_killed_while_deleting_is_finished_by_the_next_run(emulate: Emulate):
    """SIGKILL after the second deletion: some tags are gone, nothing else is; the next run
    reaches exactly the result of a run that was never interrupted."""
    expected_emulators = emulate(plain_images())
    assert (await run(settings_for(expected_emulators), tuning=FAST)).exit_code == 0
    expected = snapshot(expected_emulators)

    emulators = emulate(plain_images())
    before = snapshot(emulators)
    # every deletion answers after 0.3 s: a window to kill the process mid-deletions
    emulators.acr.knobs.faults.add(FaultRule(route="acr.*.delete", kind="slow", delay_s=0.3))
    env = cli_environment(emulators, CLEANUP_CONCURRENCY="1")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cleanup",
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(3000):
            if emulators.log.count(service="acr", method="DELETE") >= 2:
                break
            if process.returncode is not None:
                break
            await asyncio.sleep(0.01)
    finally:
        process.kill()  # SIGKILL: no cleanup of any kind
        await process.wait()
    assert process.returncode == -9, "the run ended before it could be killed"
    interrupted = snapshot(emulators)
    deleted = set(before.tags) - set(interrupted.tags)
    assert 2 <= len(deleted) < 12
    assert deleted <= set(before.tags) - set(expected.tags)

    emulators.acr.knobs.faults.clear()
    report = await run(settings_for(emulators), tuning=FAST)
    assert report.exit_code == 0, report.render_text()
    assert snapshot(emulators) == expected
