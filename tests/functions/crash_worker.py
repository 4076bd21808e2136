"""A queued run that never finishes, for the crash test: `python -m tests.functions.crash_worker
'<run message JSON>'` takes the lock, marks the run running, prints `running`, then waits until
the test kills the process (SIGKILL: no `finally`, no lease release, no record update)."""

from __future__ import annotations

import asyncio
import os
import sys

from cleanup.runs import RunMessage, RunStore
from cleanup.settings import load_settings

CRASH_LEASE_S = 15
"""Azure's shortest lease: the dead run's lock frees itself 15 s after its last renewal."""


async def _never_finishes(settings: object, run_id: str) -> object:
    print("running", run_id, flush=True)  # noqa: T201 - the test waits for this line
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def main(message_json: str) -> None:
    message = RunMessage.parse(message_json)
    settings = load_settings(os.environ, dry_run=message.dry_run)
    async with RunStore.from_environ(os.environ, settings, lease_duration=CRASH_LEASE_S) as store:
        await store.execute(message, settings, _never_finishes)  # type: ignore[arg-type]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
