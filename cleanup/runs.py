"""The Function App's run store and lock, in its own storage account (`AzureWebJobsStorage`).

One blob container (CLEANUP_STORAGE_CONTAINER) holds, per registry and per run:

- `locks/<registry>`: the lock blob. Its metadata `runid` names the registry's *current* run
  (the last one claimed); a blob lease on it is held by the process executing that run, for
  60 s at a time, renewed in the background every 20 s (a failed renewal is retried every 5 s)
  and released at the end. If no renewal succeeds for 45 s the run is cancelled, before the
  lease can lapse and another run take the lock.
- `runs/<newest-first key>_<run id>.json`: the run record (state, times, exit code, counts).
  The key inverts the run id's timestamp digits, so a plain listing is newest first.
- `reports/<run id>.json`: the run's full report, with every digest deleted: the audit trail.

State machine of a record (who writes each transition):

    queued ──(the queue function takes the lease)──> running ──> succeeded | partial | failed
    queued ──(not started within QUEUED_TIMEOUT, or its message was poisoned)──> failed
    running ──(its lease is gone: the process died or lost storage)──> failed "did not finish"
    running ──(the engine crashed, or the lease could not be renewed)──> failed "interrupted"

A run that ends without a report after it started has exit code None: it may have deleted
some images (never 3, "stopped before deleting anything").

Readers never write. They apply the same rules on the fly (`effective`): a `running` record
whose run does not hold the lock blob's lease (lease not locked, or `runid` names another run)
is reported failed, "did not finish"; a `queued` record older than QUEUED_TIMEOUT is reported
failed, "did not start". The next claim of the lock, or the dead run's own redelivered queue
message, persists that verdict.

A run is *going* (a claim answers RunGoingError, HTTP 409) while the lock's lease is held or
while the lock's current run is effectively queued or running: a queued run holds the lock
from the moment it is accepted, so a POST between queueing and running still gets 409.

Claims are atomic through the lock blob's ETag: a claim moves `runid` with `if_match`, so of
two concurrent claims one wins; setting metadata also fails while a lease is held, so no claim
can move the pointer away from an executing run.

A queue message runs its run at most once, and never another: only the message's own record,
still `queued`, named by the lock and taken under the lease, moves to `running`, and it runs
with its record's dry-run flag. A redelivered message (host crash, duplicate
delivery, poison handling) of a run that is running elsewhere, finished or dead does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobLeaseClient, ContainerClient
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient
from opentelemetry import trace

from cleanup import telemetry
from cleanup.errors import ConfigurationError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

    from cleanup.report import Report
    from cleanup.settings import Settings

log = logging.getLogger(__name__)

LEASE_DURATION_S: Final = 60
"""Seconds the executing run holds the lock per lease; Azure allows 15 to 60."""
LEASE_MARGIN_FRACTION: Final = 0.25
"""The run is stopped this share of the lease before it would lapse (15 s of a 60 s lease)
when renewals keep failing: it must never go on without the lock."""
QUEUED_TIMEOUT: Final = timedelta(minutes=15)
"""A run not started this long after it was queued counts as failed ("did not start"). It covers
a cold start and the queue's retries (host.json: 5 attempts, 30 s apart) with room to spare."""
MAX_LIST_LIMIT: Final = 100
DEFAULT_LIST_LIMIT: Final = 20
CLAIM_ATTEMPTS: Final = 5

RUN_ID_PATTERN: Final = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}")
"""`20261204T020000Z-1a2b3c4d5e6f`: UTC start second, then 48 random bits. Nothing else is a run
id, so an id from a URL can never reach outside `runs/` and `reports/`."""

MAY_HAVE_DELETED: Final = (
    "it may have deleted some images before it stopped: the registry shows what is gone, "
    "and the next run's report lists what was left to delete"
)
"""Said of every run that ended without a report after it started: its deletions are unknown."""


_INVERT: Final = str.maketrans("0123456789", "9876543210")


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self not in (RunState.QUEUED, RunState.RUNNING)


def state_for_exit_code(exit_code: int) -> RunState:
    """0 succeeded, 1 partial (some lookups or deletions failed), anything else failed: the
    same names as telemetry's `cleanup.outcome` (one mapping; docs/operations.md, Outcomes)."""
    return RunState(telemetry.outcome_for_exit_code(exit_code))


class Trigger(StrEnum):
    HTTP = "http"
    TIMER = "timer"


def new_run_id(now: datetime) -> str:
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"


def is_run_id(text: str) -> bool:
    return RUN_ID_PATTERN.fullmatch(text) is not None


def _record_blob(run_id: str) -> str:
    return f"runs/{run_id[:16].translate(_INVERT)}_{run_id}.json"


def _report_blob(run_id: str) -> str:
    return f"reports/{run_id}.json"


def _lock_blob(registry_url: str) -> str:
    netloc = urlsplit(registry_url).netloc.lower() or registry_url.lower()
    return "locks/" + re.sub(r"[^a-z0-9.-]", "_", netloc)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as the store keeps it (and, with `effective`, as users see it)."""

    run_id: str
    state: RunState
    trigger: Trigger
    dry_run: bool
    registry: str
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    error: str | None = None
    summary: Mapping[str, int] | None = None
    etag: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "status": self.state.value,
            "trigger": self.trigger.value,
            "dryRun": self.dry_run,
            "registry": self.registry,
            "queuedAt": _iso(self.queued_at),
            "startedAt": _iso(self.started_at),
            "finishedAt": _iso(self.finished_at),
            "exitCode": self.exit_code,
            "error": self.error,
            "summary": dict(self.summary) if self.summary is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, etag: str | None = None) -> RunRecord:
        queued_at = _parse_iso(data["queuedAt"])
        if queued_at is None:
            raise ValueError("a run record without queuedAt")
        summary = data.get("summary")
        return cls(
            run_id=str(data["runId"]),
            state=RunState(data["status"]),
            trigger=Trigger(data["trigger"]),
            dry_run=bool(data["dryRun"]),
            registry=str(data["registry"]),
            queued_at=queued_at,
            started_at=_parse_iso(data.get("startedAt")),
            finished_at=_parse_iso(data.get("finishedAt")),
            exit_code=data.get("exitCode"),
            error=data.get("error"),
            summary=dict(summary) if isinstance(summary, dict) else None,
            etag=etag,
        )


@dataclass(frozen=True, slots=True)
class RunMessage:
    """What the queue carries: the run to execute and its effective dry-run flag."""

    run_id: str
    dry_run: bool

    def to_json(self) -> str:
        return json.dumps({"runId": self.run_id, "dryRun": self.dry_run})

    @classmethod
    def parse(cls, text: str) -> RunMessage:
        """ValueError unless `text` is `{"runId": <run id>, "dryRun": <bool>}`."""
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError("a run message must be JSON") from None
        if not isinstance(data, dict):
            raise ValueError("a run message must be a JSON object")  # noqa: TRY004 - bad input
        run_id, dry_run = data.get("runId"), data.get("dryRun")
        if not isinstance(run_id, str) or not is_run_id(run_id):
            raise ValueError("a run message needs a valid runId")
        if not isinstance(dry_run, bool):
            raise ValueError("a run message needs dryRun true or false")  # noqa: TRY004
        return cls(run_id=run_id, dry_run=dry_run)


@dataclass(frozen=True, slots=True)
class LockState:
    """The lock blob as last read: which run it names and whether a lease is held."""

    run_id: str | None
    leased: bool
    etag: str


@dataclass(frozen=True, slots=True)
class RunView:
    """A run for the HTTP API: the effective record and, once finished, its report."""

    record: RunRecord
    report: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.record.to_dict(), "report": self.report}


class RunGoingError(Exception):
    """A run of this registry is queued or running; `run_id` names it when known."""

    def __init__(self, run_id: str | None) -> None:
        super().__init__(f"a cleanup run is already going ({run_id or 'unknown id'})")
        self.run_id = run_id


class RunNotReadyError(Exception):
    """The run cannot start yet (another instance holds the lease): let the queue retry it."""


RunEngine = Callable[["Settings", str], Awaitable["Report"]]
"""`(settings, run_id) -> Report`: cleanup.engine.run, or a test's stand-in."""


def effective(record: RunRecord, lock: LockState | None, now: datetime) -> RunRecord:
    """The record as users must see it: a dead run reported failed, with why."""
    if record.state is RunState.RUNNING:
        alive = lock is not None and lock.leased and lock.run_id == record.run_id
        if alive:
            return record
        return replace(
            record,
            state=RunState.FAILED,
            error="did not finish: the run stopped holding its lock (the process ended or "
            f"lost its storage) before recording a result; no report; {MAY_HAVE_DELETED}",
        )
    if record.state is RunState.QUEUED and now - record.queued_at > QUEUED_TIMEOUT:
        minutes = int(QUEUED_TIMEOUT.total_seconds() // 60)
        return replace(
            record,
            state=RunState.FAILED,
            error=f"did not start within {minutes} minutes of being queued "
            "(its queue message was not processed)",
        )
    return record


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


def _summary_counts(report_dict: Mapping[str, Any]) -> dict[str, int]:
    summary = report_dict.get("summary")
    if not isinstance(summary, dict):
        return {}
    return {str(k): int(v) for k, v in summary.items() if isinstance(v, int)}


def _first_error(report_dict: Mapping[str, Any]) -> str | None:
    """Why a run did not succeed, in one line: why it stopped, else its first error."""
    summary = report_dict.get("summary")
    stopped = summary.get("stopped") if isinstance(summary, dict) else None
    if isinstance(stopped, str) and stopped:
        return f"stopped: {stopped}"[:500]
    errors = report_dict.get("errors")
    if not isinstance(errors, list) or not errors:
        return None
    first = errors[0]
    if isinstance(first, dict):
        text = first.get("message") or first.get("error") or json.dumps(first)
        return str(text)[:500]
    return str(first)[:500]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """How to reach the Function App's storage, read from the host's own settings."""

    connection_string: str | None = field(default=None, repr=False)
    blob_service_uri: str | None = None
    queue_service_uri: str | None = None
    managed_identity: bool = False
    client_id: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> StorageConfig:
        """`AzureWebJobsStorage` (a connection string, Azurite's `UseDevelopmentStorage=true`),
        or the identity-based `AzureWebJobsStorage__*` settings the host itself reads."""
        connection = environ.get("AzureWebJobsStorage", "").strip()
        if connection:
            return cls(connection_string=connection)
        prefix = "AzureWebJobsStorage__"
        account = environ.get(prefix + "accountName", "").strip()
        blob = environ.get(prefix + "blobServiceUri", "").strip() or (
            f"https://{account}.blob.core.windows.net" if account else ""
        )
        queue = environ.get(prefix + "queueServiceUri", "").strip() or (
            f"https://{account}.queue.core.windows.net" if account else ""
        )
        if not blob or not queue:
            raise ConfigurationError(
                "AzureWebJobsStorage is not set: set it to a connection string "
                "(UseDevelopmentStorage=true for Azurite), or set "
                "AzureWebJobsStorage__accountName, or both AzureWebJobsStorage__blobServiceUri "
                "and AzureWebJobsStorage__queueServiceUri"
            )
        credential = environ.get(prefix + "credential", "").strip().lower()
        return cls(
            blob_service_uri=blob,
            queue_service_uri=queue,
            managed_identity=credential == "managedidentity",
            client_id=environ.get(prefix + "clientId", "").strip() or None,
        )


class RunStore:
    """The run records, reports and lock of one registry. Use as `async with`."""

    def __init__(
        self,
        container: ContainerClient,
        queue: QueueClient,
        *,
        registry: str,
        registry_url: str,
        lease_duration: int = LEASE_DURATION_S,
        clock: Callable[[], datetime] = _utcnow,
        credential: AsyncTokenCredential | None = None,
    ) -> None:
        if not 15 <= lease_duration <= 60:
            raise ValueError("lease_duration must be from 15 to 60 seconds (Azure's range)")
        self._container = container
        self._queue = queue
        self._registry = registry
        self._lock = container.get_blob_client(_lock_blob(registry_url))
        self._lease_duration = lease_duration
        self._clock = clock
        self._credential = credential
        self._ready = False

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        settings: Settings,
        *,
        lease_duration: int = LEASE_DURATION_S,
        clock: Callable[[], datetime] = _utcnow,
    ) -> RunStore:
        """The store in the storage the host uses, for the registry and names in `settings`."""
        config = StorageConfig.from_environ(environ)
        queue_options: dict[str, Any] = {
            # The Functions host's queue trigger expects base64 text (messageEncoding's default).
            "message_encode_policy": TextBase64EncodePolicy(),
            "message_decode_policy": TextBase64DecodePolicy(),
        }
        credential: AsyncTokenCredential | None = None
        if config.connection_string is not None:
            container = ContainerClient.from_connection_string(
                config.connection_string, settings.storage_container
            )
            queue = QueueClient.from_connection_string(
                config.connection_string, settings.run_queue, **queue_options
            )
        else:
            credential = _storage_credential(config)
            container = ContainerClient(
                str(config.blob_service_uri), settings.storage_container, credential=credential
            )
            queue = QueueClient(
                str(config.queue_service_uri),
                settings.run_queue,
                credential=credential,
                **queue_options,
            )
        return cls(
            container,
            queue,
            registry=settings.registry,
            registry_url=settings.registry_url,
            lease_duration=lease_duration,
            clock=clock,
            credential=credential,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._container.close()
        await self._queue.close()
        if self._credential is not None:
            await self._credential.close()

    # --- reading -----------------------------------------------------------------------

    async def get(self, run_id: str) -> RunView | None:
        """The run's effective record and, once finished, its report; None if unknown."""
        if not is_run_id(run_id):
            raise ValueError("not a run id")
        record = await self._load(run_id)
        if record is None:
            return None
        record = effective(record, await self._read_lock(), self._clock())
        report = await self._load_report(run_id) if record.state.finished else None
        return RunView(record=record, report=report)

    async def list(self, limit: int = DEFAULT_LIST_LIMIT) -> list[RunRecord]:
        """The most recent runs, newest first, at most `limit` (1 to MAX_LIST_LIMIT)."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be from 1 to {MAX_LIST_LIMIT}")
        names: list[str] = []
        try:
            async for blob in self._container.list_blobs(
                name_starts_with="runs/", results_per_page=limit
            ):
                names.append(blob.name)
                if len(names) >= limit:
                    break
        except ResourceNotFoundError:
            return []
        lock = await self._read_lock()
        now = self._clock()
        loaded = await asyncio.gather(*(self._load_blob(name) for name in names))
        return [effective(r, lock, now) for r in loaded if r is not None]

    # --- claiming ----------------------------------------------------------------------

    async def claim(self, *, trigger: Trigger, dry_run: bool) -> RunRecord:
        """Record a new queued run and put its message on the queue; RunGoingError if busy."""
        await self._ensure_ready()
        for _ in range(CLAIM_ATTEMPTS):
            lock = await self._read_lock(create=True)
            if lock is None:  # deleted between creating and reading it: look again
                continue
            if lock.leased:
                raise RunGoingError(lock.run_id)
            if lock.run_id is not None and not await self._settle_previous(lock, lock.run_id):
                continue
            now = self._clock()
            record = RunRecord(
                run_id=new_run_id(now),
                state=RunState.QUEUED,
                trigger=trigger,
                dry_run=dry_run,
                registry=self._registry,
                queued_at=now,
            )
            record = await self._save(record, create=True)
            try:
                await self._lock.set_blob_metadata(
                    {"runid": record.run_id},
                    etag=lock.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            except HttpResponseError as error:
                if error.status_code not in (409, 412):
                    raise
                # Another claim won, or a run took the lease: this run never existed.
                await self._container.delete_blob(_record_blob(record.run_id))
                continue
            try:
                await self._queue.send_message(
                    RunMessage(run_id=record.run_id, dry_run=dry_run).to_json()
                )
            except Exception as error:
                await self._save(
                    replace(
                        record,
                        state=RunState.FAILED,
                        finished_at=self._clock(),
                        error=f"could not be queued: {_error_text(error)}",
                    )
                )
                raise
            log.info(
                "cleanup run %s queued (%s, dry run %s)",
                record.run_id,
                trigger.value,
                dry_run,
                extra={"cleanup.run_id": record.run_id, "cleanup.registry": self._registry},
            )
            return record
        raise RunGoingError(None)

    async def _settle_previous(self, lock: LockState, run_id: str) -> bool:
        """Raise RunGoingError if the lock's current run is going; persist it failed if it
        is dead. False when the record changed meanwhile (the caller reads again)."""
        current = await self._load(run_id)
        if current is None:
            return True
        verdict = effective(current, lock, self._clock())
        if not verdict.state.finished:
            raise RunGoingError(current.run_id)
        if verdict.state is not current.state:
            try:
                await self._persist_dead(current, verdict)
            except ResourceModifiedError:
                return False
        return True

    async def _persist_dead(self, stored: RunRecord, verdict: RunRecord) -> None:
        dead = replace(verdict, finished_at=self._clock())
        await self._save(dead, if_match=stored.etag)
        log.warning(
            "cleanup run %s failed: %s",
            dead.run_id,
            dead.error,
            extra={"cleanup.run_id": dead.run_id, "cleanup.registry": dead.registry},
        )
        telemetry.record_failed_run(
            registry=dead.registry,
            run_id=dead.run_id,
            dry_run=dead.dry_run,
            duration_s=None,
            reason=dead.error or "did not finish",
        )

    # --- executing ---------------------------------------------------------------------

    async def execute(
        self, message: RunMessage, settings: Settings, run_engine: RunEngine
    ) -> RunRecord | None:
        """Run a queued run once, under the lock's lease; the record as finished, or None
        when the message has nothing (more) to run. RunNotReadyError: retry later.

        Only the message's own run ever starts, and with the dry-run flag of its stored
        record (the source of truth), whatever `settings.dry_run` and the message say."""
        record = await self._load(message.run_id)
        if record is None:
            log.warning("cleanup run %s: no such run; message dropped", message.run_id)
            return None
        if record.state.finished:
            log.info("cleanup run %s already %s; not run again", record.run_id, record.state)
            return record
        acquired_at = time.monotonic()
        lease = await self._acquire(record)
        if lease is None:
            return None
        try:
            started = await self._start(lease, message.run_id)
            if started is None:
                return None
            if started.dry_run is not message.dry_run:
                log.warning(
                    "cleanup run %s: its message says dry run %s, its record %s; the record wins",
                    started.run_id,
                    message.dry_run,
                    started.dry_run,
                )
            run_settings = replace(settings, dry_run=started.dry_run)
            return await self._run_holding(lease, acquired_at, started, run_settings, run_engine)
        finally:
            await self._release(lease)

    async def _release(self, lease: BlobLeaseClient) -> None:
        """Release the lease, at most one renewal interval; if storage is gone, it lapses."""
        try:
            async with asyncio.timeout(self._lease_duration / 3):
                await lease.release()
        except (AzureError, OSError, TimeoutError) as error:
            log.warning("could not release the cleanup lock lease: %s", _error_text(error))

    async def _acquire(self, record: RunRecord) -> BlobLeaseClient | None:
        await self._ensure_ready()
        await self._read_lock(create=True)
        try:
            return await self._lock.acquire_lease(
                lease_duration=self._lease_duration, lease_id=str(uuid.uuid4())
            )
        except ResourceExistsError:
            pass  # 409 LeaseAlreadyPresent: someone else holds the lock
        lock = await self._read_lock()
        verdict = effective(record, lock, self._clock())
        if lock is not None and lock.run_id == record.run_id and record.state is RunState.QUEUED:
            # A duplicate delivery is starting this run on another instance; look again later.
            raise RunNotReadyError(f"cleanup run {record.run_id}: the lock is busy")
        log.info(
            "cleanup run %s: another run holds the lock; this message is dropped (%s)",
            record.run_id,
            verdict.state,
        )
        return None

    async def _start(self, lease: BlobLeaseClient, run_id: str) -> RunRecord | None:
        """Under the lease: the message's run `run_id` queued -> running, or persist why it
        will not run. Nothing starts unless the lock still names `run_id`."""
        lock = await self._read_lock()  # we hold its lease, so it exists
        if lock is None or lock.run_id != run_id:
            # The lock moved on while this message waited: a newer claim settled this run
            # (failed, "did not start") and queued its own, which its own message starts.
            log.info(
                "cleanup run %s: the lock names run %s now; this message starts nothing",
                run_id,
                lock.run_id if lock is not None else None,
            )
            return None
        # While we hold the lease, no claim can move the pointer; re-read the record for an
        # ETag taken under the lease.
        record = await self._load(run_id)
        if record is None or record.run_id != run_id:
            return None
        if record.state is RunState.RUNNING:
            # Its previous holder's lease ran out: it is dead, and is never run again.
            await self._persist_dead(record, effective(record, None, self._clock()))
            return None
        if record.state is not RunState.QUEUED:
            return None
        verdict = effective(record, lock, self._clock())
        if verdict.state.finished:
            await self._persist_dead(record, verdict)
            return None
        try:
            return await self._save(
                replace(record, state=RunState.RUNNING, started_at=self._clock()),
                if_match=record.etag,
            )
        except ResourceModifiedError:
            raise RunNotReadyError(f"cleanup run {record.run_id} changed; retry") from None

    async def _run_holding(
        self,
        lease: BlobLeaseClient,
        acquired_at: float,
        record: RunRecord,
        settings: Settings,
        run_engine: RunEngine,
    ) -> RunRecord:
        started = time.monotonic()
        lost_lock = asyncio.Event()
        report: Report | None = None
        error: str | None = None
        exit_code: int | None = None
        with telemetry.execution_span(
            run_id=record.run_id,
            registry=record.registry,
            dry_run=record.dry_run,
            trigger=record.trigger.value,
        ) as span:
            engine_task = asyncio.ensure_future(run_engine(settings, record.run_id))
            renewer = asyncio.create_task(
                self._keep_lease(lease, acquired_at, engine_task, lost_lock)
            )
            try:
                report = await engine_task
            except asyncio.CancelledError as exc:
                if not lost_lock.is_set():
                    raise
                span.record_exception(exc)
                error = (
                    "interrupted: the run lost its lock lease (storage unreachable) and was "
                    f"stopped before it finished; no report; {MAY_HAVE_DELETED}"
                )
            except ConfigurationError as exc:
                span.record_exception(exc)
                error = f"configuration error: {exc}"
                exit_code = 2
            except Exception as exc:
                span.record_exception(exc)
                log.exception("cleanup run %s crashed", record.run_id)
                error = (
                    f"interrupted: the run crashed ({_error_text(exc)}); no report; "
                    f"{MAY_HAVE_DELETED}"
                )
            finally:
                renewer.cancel()
                # Never raises (the outer task's own cancellation aside): whatever became of
                # the renewer, the run's result below is still recorded.
                await asyncio.wait([renewer])
                failure = None if renewer.cancelled() else renewer.exception()
                if failure is not None:
                    log.error("the cleanup lock renewer failed: %s", _error_text(failure))
            if error is not None:
                span.set_status(trace.StatusCode.ERROR, error)
        duration = time.monotonic() - started
        if report is not None:
            return await self._finish_with_report(record, report, duration)
        failed = replace(
            record,
            state=RunState.FAILED,
            finished_at=self._clock(),
            exit_code=exit_code,
            error=error[:500] if error else error,
        )
        telemetry.record_failed_run(
            registry=record.registry,
            run_id=record.run_id,
            dry_run=record.dry_run,
            duration_s=duration,
            reason=error or "failed",
        )
        # Unconditional: this process owns the run; its own result beats a reader's verdict.
        return await self._save(failed)

    async def _finish_with_report(
        self, record: RunRecord, report: Report, duration_s: float
    ) -> RunRecord:
        data = report.to_dict()
        await self._container.upload_blob(
            _report_blob(record.run_id),
            report.to_json(),
            overwrite=True,
            content_settings=ContentSettings(content_type="application/json"),
        )
        state = state_for_exit_code(report.exit_code)
        finished = replace(
            record,
            state=state,
            finished_at=self._clock(),
            exit_code=report.exit_code,
            summary=_summary_counts(data),
            error=_first_error(data) if state is not RunState.SUCCEEDED else None,
        )
        telemetry.record_run(report, duration_s)
        return await self._save(finished)

    async def _keep_lease(
        self,
        lease: BlobLeaseClient,
        acquired_at: float,
        engine_task: asyncio.Future[Any],
        lost: asyncio.Event,
    ) -> None:
        """Renew the lease every third of its duration; on failure retry every few seconds,
        each attempt bounded, until `deadline`. At the deadline (a margin before the lease
        would lapse, counted from when the last successful renewal was *sent*), or as soon
        as storage says the lease is gone, cancel the engine: it never runs unguarded."""
        duration = float(self._lease_duration)
        interval = duration / 3
        retry_every = max(1.0, interval / 4)
        margin = duration * LEASE_MARGIN_FRACTION
        renewed_at = acquired_at
        next_attempt = renewed_at + interval
        try:
            while True:
                deadline = renewed_at + duration - margin
                now = time.monotonic()
                if now < min(next_attempt, deadline):
                    await asyncio.sleep(min(next_attempt, deadline) - now)
                    continue
                if now >= deadline:
                    log.error(
                        "cleanup lock lease not renewed for %.0f s; stopping the run before "
                        "the lease lapses",
                        now - renewed_at,
                    )
                    break
                attempt_at = now
                try:
                    async with asyncio.timeout(min(interval, deadline - now)):
                        await lease.renew()
                except HttpResponseError as error:
                    log.warning("could not renew the cleanup lock lease: %s", _error_text(error))
                    if error.status_code in (409, 412):  # the lease is gone (broken, taken)
                        break
                    next_attempt = time.monotonic() + retry_every
                except (AzureError, OSError, TimeoutError) as error:
                    log.warning("could not renew the cleanup lock lease: %s", _error_text(error))
                    next_attempt = time.monotonic() + retry_every
                else:
                    renewed_at = attempt_at
                    next_attempt = attempt_at + interval
        except Exception:
            # Nothing else is expected; whatever it was, the lease can no longer be vouched for.
            log.exception("the cleanup lock renewer failed; stopping the run")
        lost.set()
        engine_task.cancel()

    # --- abandoning --------------------------------------------------------------------

    async def abandon(self, run_id: str, reason: str) -> RunRecord | None:
        """Mark a queued run failed (its message is poisoned): it will never start."""
        record = await self._load(run_id)
        if record is None or record.state is not RunState.QUEUED:
            return record
        failed = replace(
            record, state=RunState.FAILED, finished_at=self._clock(), error=reason[:500]
        )
        try:
            await self._persist_dead(record, failed)
        except ResourceModifiedError:
            return await self._load(run_id)
        return failed

    # --- storage -----------------------------------------------------------------------

    async def _ensure_ready(self) -> None:
        if self._ready:
            return
        with contextlib.suppress(ResourceExistsError):
            await self._container.create_container()
        with contextlib.suppress(ResourceExistsError):
            await self._queue.create_queue()
        self._ready = True

    async def _read_lock(self, *, create: bool = False) -> LockState | None:
        if create:
            with contextlib.suppress(ResourceExistsError):
                await self._lock.upload_blob(b"", overwrite=False)
        try:
            props = await self._lock.get_blob_properties()
        except ResourceNotFoundError:
            return None
        return LockState(
            run_id=props.metadata.get("runid") or None,
            leased=props.lease.status == "locked",
            etag=str(props.etag),
        )

    async def _load(self, run_id: str) -> RunRecord | None:
        return await self._load_blob(_record_blob(run_id))

    async def _load_blob(self, name: str) -> RunRecord | None:
        try:
            downloader = await self._container.download_blob(name)
            body = await downloader.readall()
        except ResourceNotFoundError:
            return None
        return RunRecord.from_dict(json.loads(body), etag=downloader.properties.etag)

    async def _load_report(self, run_id: str) -> dict[str, Any] | None:
        try:
            downloader = await self._container.download_blob(_report_blob(run_id))
            body = await downloader.readall()
        except ResourceNotFoundError:
            return None
        data = json.loads(body)
        return data if isinstance(data, dict) else None

    async def _save(
        self, record: RunRecord, *, create: bool = False, if_match: str | None = None
    ) -> RunRecord:
        """Write the record; `if_match` makes it a compare-and-swap (ResourceModifiedError),
        `create` refuses to overwrite (ResourceExistsError)."""
        options: dict[str, Any] = {"overwrite": not create}
        if if_match is not None:
            options["etag"] = if_match
            options["match_condition"] = MatchConditions.IfNotModified
        result = await self._container.get_blob_client(_record_blob(record.run_id)).upload_blob(
            json.dumps(record.to_dict()),
            content_settings=ContentSettings(content_type="application/json"),
            **options,
        )
        return replace(record, etag=str(result["etag"]))


def _storage_credential(config: StorageConfig) -> AsyncTokenCredential:
    if config.managed_identity:
        from azure.identity.aio import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=config.client_id)
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=config.client_id)


@contextlib.asynccontextmanager
async def open_store(
    environ: Mapping[str, str], settings: Settings, *, lease_duration: int = LEASE_DURATION_S
) -> AsyncIterator[RunStore]:
    """`RunStore.from_environ` as a context manager that closes its clients."""
    store = RunStore.from_environ(environ, settings, lease_duration=lease_duration)
    async with store:
        yield store
