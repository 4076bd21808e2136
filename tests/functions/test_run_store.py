"""The run store and lock against a real Azurite: one run at a time, each message run once,
dead runs reported and never holding the lock. The engine is a stand-in here; the real one
runs in test_runs_end_to_end.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobClient, ContainerClient
from azure.storage.blob.aio import ContainerClient as AsyncContainerClient
from azure.storage.queue.aio import QueueClient as AsyncQueueClient

from cleanup.errors import ConfigurationError
from cleanup.runs import (
    MAY_HAVE_DELETED,
    QUEUED_TIMEOUT,
    RunGoingError,
    RunMessage,
    RunState,
    RunStore,
    Trigger,
)
from cleanup.settings import load_settings
from tests.azurite import Azurite
from tests.functions.conftest import body_of, call, http, take_messages
from tests.functions.proxy import CuttableProxy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class StandInReport:
    """What the store reads of a report: to_dict, to_json and exit_code."""

    run_id: str
    exit_code: int = 0
    summary: dict[str, int] = field(
        default_factory=lambda: {"tagsScanned": 3, "deleted": 2, "kept": 1, "failed": 0}
    )
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schemaVersion": 1,
            "runId": self.run_id,
            "dryRun": False,
            "registry": "contoso.azurecr.io",
            "summary": self.summary,
            "actions": [],
            "errors": self.errors,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


class StandInEngine:
    """Counts its calls; answers a report with the given exit code, or raises."""

    def __init__(self, exit_code: int = 0, raises: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.dry_runs: list[bool] = []
        self.exit_code = exit_code
        self.raises = raises

    async def __call__(self, settings: Any, run_id: str) -> StandInReport:
        self.calls.append(run_id)
        self.dry_runs.append(settings.dry_run)
        if self.raises is not None:
            raise self.raises
        errors = [] if self.exit_code == 0 else [{"scope": "run", "message": "it went wrong"}]
        return StandInReport(run_id=run_id, exit_code=self.exit_code, errors=errors)


def store_for(env: dict[str, str], **options: Any) -> RunStore:
    return RunStore.from_environ(env, load_settings(env), **options)


async def queued(env: dict[str, str]) -> tuple[RunStore, RunMessage]:
    store = store_for(env)
    record = await store.claim(trigger=Trigger.HTTP, dry_run=False)
    (message,) = take_messages(env)
    assert RunMessage.parse(message.get_body().decode()).run_id == record.run_id
    return store, RunMessage(run_id=record.run_id, dry_run=False)


async def test_a_queued_run_runs_once_and_stores_its_report(app_env):
    """execute runs the engine under the lock, stores the report, and never runs it twice."""
    store, message = await queued(app_env)
    engine = StandInEngine()
    async with store:
        finished = await store.execute(message, load_settings(app_env), engine)
        assert finished is not None
        assert finished.state is RunState.SUCCEEDED
        assert finished.exit_code == 0
        assert finished.summary == {"tagsScanned": 3, "deleted": 2, "kept": 1, "failed": 0}
        view = await store.get(message.run_id)
        assert view is not None
        assert view.record.state is RunState.SUCCEEDED
        assert view.report is not None
        assert view.report["runId"] == message.run_id
        again = await store.execute(message, load_settings(app_env), engine)
        assert again is not None
        assert again.state is RunState.SUCCEEDED
        assert engine.calls == [message.run_id]
        # the lock is free again
        await store.claim(trigger=Trigger.TIMER, dry_run=True)


@pytest.mark.parametrize(
    ("exit_code", "state"),
    [(0, RunState.SUCCEEDED), (1, RunState.PARTIAL), (3, RunState.FAILED)],
)
async def test_the_exit_code_decides_the_state(app_env, exit_code, state):
    """Exit code 0 succeeded, 1 partial, 3 failed; the first error is on the record."""
    store, message = await queued(app_env)
    async with store:
        record = await store.execute(message, load_settings(app_env), StandInEngine(exit_code))
    assert record is not None
    assert (record.state, record.exit_code) == (state, exit_code)
    assert record.error == (None if exit_code == 0 else "it went wrong")


@pytest.mark.parametrize(
    ("raises", "exit_code", "error"),
    [
        (
            RuntimeError("boom"),
            None,
            f"interrupted: the run crashed (RuntimeError: boom); no report; {MAY_HAVE_DELETED}",
        ),
        (ConfigurationError("CLEANUP_X is bad"), 2, "configuration error: CLEANUP_X is bad"),
    ],
)
async def test_a_crashing_engine_fails_the_run_and_frees_the_lock(
    app_env, raises, exit_code, error
):
    """An exception from the engine: the run is failed with why, and the lock is released; a
    crash never claims exit code 3 ("stopped before deleting"): it may have deleted some."""
    store, message = await queued(app_env)
    async with store:
        record = await store.execute(message, load_settings(app_env), StandInEngine(raises=raises))
        assert record is not None
        assert (record.state, record.exit_code, record.error) == (
            RunState.FAILED,
            exit_code,
            error,
        )
        view = await store.get(message.run_id)
        assert view is not None
        assert view.report is None
        await store.claim(trigger=Trigger.HTTP, dry_run=False)


async def test_concurrent_claims_queue_exactly_one_run(app_env):
    """Of several claims at once, one queues a run and every other gets RunGoingError."""
    stores = [store_for(app_env) for _ in range(5)]
    results = await asyncio.gather(
        *(s.claim(trigger=Trigger.HTTP, dry_run=True) for s in stores), return_exceptions=True
    )
    for s in stores:
        await s.close()
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, RunGoingError)]
    assert len(accepted) == 1
    assert len(refused) == 4
    assert len(take_messages(app_env)) == 1


async def test_runs_are_listed_newest_first_and_limited(app_env):
    """The listing is newest first and stops at limit."""
    start = datetime.now(UTC) - timedelta(hours=1)
    ids = []
    for minute in range(4):
        moment = start + timedelta(minutes=minute)
        async with store_for(app_env, clock=lambda m=moment: m) as store:
            record = await store.claim(trigger=Trigger.HTTP, dry_run=True)
            take_messages(app_env)
            await store.execute(
                RunMessage(run_id=record.run_id, dry_run=True),
                load_settings(app_env),
                StandInEngine(),
            )
            ids.append(record.run_id)
    async with store_for(app_env) as store:
        listed = await store.list(3)
    assert [r.run_id for r in listed] == ids[::-1][:3]
    assert all(r.state is RunState.SUCCEEDED for r in listed)


async def test_a_run_not_started_in_time_reads_failed_and_frees_the_lock(app_env):
    """A queued run older than QUEUED_TIMEOUT reads failed; the next claim and its late
    message both leave it failed and unrun."""
    store, message = await queued(app_env)
    await store.close()
    later = datetime.now(UTC) + QUEUED_TIMEOUT + timedelta(minutes=1)
    engine = StandInEngine()
    async with store_for(app_env, clock=lambda: later) as late:
        view = await late.get(message.run_id)
        assert view is not None
        assert view.record.state is RunState.FAILED
        assert "did not start" in (view.record.error or "")
        assert await late.execute(message, load_settings(app_env), engine) is None
        assert engine.calls == []
        await late.claim(trigger=Trigger.HTTP, dry_run=False)


def stored_record(env: dict[str, str], run_id: str) -> dict[str, Any]:
    """The record blob as stored (not as a reader sees it)."""
    with ContainerClient.from_connection_string(
        env["AzureWebJobsStorage"], env["CLEANUP_STORAGE_CONTAINER"]
    ) as container:
        (name,) = [b.name for b in container.list_blobs("runs/") if run_id in b.name]
        return json.loads(container.download_blob(name).readall())


@pytest.mark.slow
async def test_a_crashed_run_is_reported_unfinished_and_does_not_hold_the_lock(functions, app_env):
    """A run whose process is killed: 409 while its lease lives; once the lease expires
    (15 s, no renewal) it reads failed "did not finish", the lock is free, and its message,
    delivered again, does not run it."""
    response = await call(functions, "start_run")(http("POST", "cleanup"))
    run_id = body_of(response)["runId"]
    (message,) = take_messages(app_env)
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.functions.crash_worker",
        message.get_body().decode(),
        cwd=ROOT,
        env=app_env | {"PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), timeout=60)
        assert line.decode().split() == ["running", run_id]
        get = http("GET", f"cleanup/runs/{run_id}", route_params={"runId": run_id})
        assert body_of(await call(functions, "get_run")(get))["status"] == "running"
        busy = await call(functions, "start_run")(http("POST", "cleanup"))
        assert busy.status_code == 409
        assert body_of(busy)["runId"] == run_id
    finally:
        worker.kill()  # SIGKILL: the process gets no chance to release its lease
        await worker.wait()

    deadline = time.monotonic() + 60
    while True:
        answer = body_of(await call(functions, "get_run")(get))
        if answer["status"] != "running" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert answer["status"] == "failed"
    assert answer["error"].startswith("did not finish")
    assert answer["report"] is None
    assert stored_record(app_env, run_id)["status"] == "running"  # readers never write

    # its message, delivered again, persists the verdict and runs nothing
    engine = StandInEngine()
    async with store_for(app_env) as store:
        assert (
            await store.execute(RunMessage(run_id, False), load_settings(app_env), engine) is None
        )
    assert engine.calls == []
    assert stored_record(app_env, run_id)["status"] == "failed"

    accepted = await call(functions, "start_run")(http("POST", "cleanup"))
    assert accepted.status_code == 202


async def test_a_run_that_loses_its_lease_stops_instead_of_running_unguarded(app_env):
    """If the lease is lost (here: broken by someone else), the run is cancelled at the next
    renewal and recorded failed, rather than going on without the lock."""
    from azure.storage.blob.aio import BlobClient, BlobLeaseClient

    store, message = await queued(app_env)
    await store.close()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def held(settings, run_id):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with store_for(app_env, lease_duration=15) as guarded:
        execution = asyncio.create_task(guarded.execute(message, load_settings(app_env), held))
        await asyncio.wait_for(started.wait(), timeout=60)
        async with BlobClient.from_connection_string(
            app_env["AzureWebJobsStorage"],
            app_env["CLEANUP_STORAGE_CONTAINER"],
            "locks/contoso.azurecr.io",
        ) as lock:
            await BlobLeaseClient(lock).break_lease(lease_break_period=0)
        record = await asyncio.wait_for(execution, timeout=60)
    assert cancelled.is_set()
    assert record is not None
    assert record.state is RunState.FAILED
    assert record.exit_code is None  # not 3: it may have deleted before it was stopped
    assert "lost its lock lease" in (record.error or "")
    assert MAY_HAVE_DELETED in (record.error or "")


def record_blob_name(env: dict[str, str], run_id: str) -> str:
    with ContainerClient.from_connection_string(
        env["AzureWebJobsStorage"], env["CLEANUP_STORAGE_CONTAINER"]
    ) as container:
        (name,) = [b.name for b in container.list_blobs("runs/") if run_id in b.name]
        return name


async def test_a_stale_message_never_runs_the_run_the_lock_names_now(app_env):
    """Race: run A's message read A's record as queued, then a newer claim B failed A and
    moved the lock to B. A's delivery, taking the lease, runs nothing: not B (with A's
    dry-run flag) and not A."""
    store, message_a = await queued(app_env)  # A: a real run
    await store.close()
    name_a = record_blob_name(app_env, message_a.run_id)
    with ContainerClient.from_connection_string(
        app_env["AzureWebJobsStorage"], app_env["CLEANUP_STORAGE_CONTAINER"]
    ) as container:
        as_read = container.download_blob(name_a).readall()  # A, queued, as its delivery saw it
        later = datetime.now(UTC) + QUEUED_TIMEOUT + timedelta(minutes=1)
        async with store_for(app_env, clock=lambda: later) as late:
            run_b = await late.claim(trigger=Trigger.HTTP, dry_run=True)  # B: a dry run
        take_messages(app_env)
        assert stored_record(app_env, message_a.run_id)["status"] == "failed"
        # Arrange what A's delivery works on: A's record as it read it, the lock naming B.
        container.upload_blob(name_a, as_read, overwrite=True)

    engine = StandInEngine()
    async with store_for(app_env) as store:
        assert await store.execute(message_a, load_settings(app_env), engine) is None
    assert engine.calls == []
    assert stored_record(app_env, run_b.run_id)["status"] == "queued"


async def test_the_stored_record_decides_dry_run_not_the_message(app_env):
    """A run requested as a dry run runs dry even if its message (and the app's settings)
    say otherwise: the record is the source of truth."""
    async with store_for(app_env) as store:
        record = await store.claim(trigger=Trigger.HTTP, dry_run=True)
        take_messages(app_env)
        engine = StandInEngine()
        finished = await store.execute(
            RunMessage(run_id=record.run_id, dry_run=False),
            load_settings(app_env, dry_run=False),
            engine,
        )
    assert engine.dry_runs == [True]
    assert finished is not None
    assert finished.dry_run is True


def proxied_store(
    env: dict[str, str], proxy: CuttableProxy, **blob_options: Any
) -> tuple[RunStore, BlobClient]:
    """A store (15 s lease) whose blob traffic, lease renewals included, goes through `proxy`;
    and a direct client of the lock blob, to look at the lease as storage sees it."""
    settings = load_settings(env)
    connection = env["AzureWebJobsStorage"]
    through_proxy = re.sub(
        r"BlobEndpoint=http://127\.0\.0\.1:[0-9]+/",
        f"BlobEndpoint=http://127.0.0.1:{proxy.port}/",
        connection,
    )
    assert through_proxy != connection
    store = RunStore(
        AsyncContainerClient.from_connection_string(
            through_proxy, settings.storage_container, **blob_options
        ),
        AsyncQueueClient.from_connection_string(connection, settings.run_queue),
        registry=settings.registry,
        registry_url=settings.registry_url,
        lease_duration=15,
    )
    lock = BlobClient.from_connection_string(
        connection, settings.storage_container, "locks/contoso.azurecr.io"
    )
    return store, lock


class _Seen(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@contextlib.contextmanager
def logged(text: str) -> Iterator[asyncio.Event]:
    """An event set when the run store logs a line containing `text`."""
    handler = _Seen(text)
    logger = logging.getLogger("cleanup.runs")
    logger.addHandler(handler)
    try:
        yield handler.event
    finally:
        logger.removeHandler(handler)


@pytest.mark.slow
async def test_a_renewal_that_cannot_connect_is_retried_and_the_report_stored(
    app_env, azurite: Azurite
):
    """A lease renewal failing with a connection error (not an HTTP error) does not end the
    renewer or the run: it is retried, the run finishes, and its report is stored."""
    store, message = await queued(app_env)
    await store.close()
    started, finish = asyncio.Event(), asyncio.Event()

    async def engine(settings: Any, run_id: str) -> StandInReport:
        started.set()
        await finish.wait()
        return StandInReport(run_id=run_id)

    async with CuttableProxy(azurite.blob_port) as proxy:
        # No SDK retries: the renewal's connection error reaches the renewer at once.
        guarded, lock = proxied_store(app_env, proxy, retry_total=0)
        async with guarded:
            execution = asyncio.create_task(
                guarded.execute(message, load_settings(app_env), engine)
            )
            await asyncio.wait_for(started.wait(), timeout=60)
            with logged("could not renew the cleanup lock lease") as renewal_failed:
                proxy.cut()
                # Storage stays unreachable until the renewer has seen a renewal fail.
                await asyncio.wait_for(renewal_failed.wait(), timeout=30)
            proxy.restore()
            finish.set()
            record = await asyncio.wait_for(execution, timeout=60)
        lock.close()
    assert record is not None
    assert record.state is RunState.SUCCEEDED
    async with store_for(app_env) as reader:
        view = await reader.get(message.run_id)
    assert view is not None
    assert view.report is not None
    assert view.report["runId"] == message.run_id


@pytest.mark.slow
async def test_renewals_that_keep_failing_stop_the_run_before_the_lease_lapses(
    app_env, azurite: Azurite
):
    """Storage unreachable for good: the engine is cancelled while the lease is still held
    (never after it lapsed, when another run could start), and once storage is back the run
    is recorded failed, interrupted, without claiming it deleted nothing."""
    store, message = await queued(app_env)
    await store.close()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def engine(settings: Any, run_id: str) -> StandInReport:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    async with CuttableProxy(azurite.blob_port) as proxy:
        guarded, lock = proxied_store(app_env, proxy)  # the SDK's own retries, as deployed
        async with guarded:
            execution = asyncio.create_task(
                guarded.execute(message, load_settings(app_env), engine)
            )
            await asyncio.wait_for(started.wait(), timeout=60)
            proxy.cut()
            await asyncio.wait_for(cancelled.wait(), timeout=40)
            assert lock.get_blob_properties().lease.state == "leased"
            proxy.restore()
            record = await asyncio.wait_for(execution, timeout=60)
        lock.close()
    assert record is not None
    assert record.state is RunState.FAILED
    assert record.exit_code is None
    assert (record.error or "").startswith("interrupted: the run lost its lock lease")
    assert MAY_HAVE_DELETED in (record.error or "")
