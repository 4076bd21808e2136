"""The one module that knows the order of a run: scan, look up, plan, execute.

Listing runs across repositories at once; pull-request lookups start as soon as the first
listing names a pull request, so the two overlap. Deletions start only once the whole plan is
known and within the safety cap. Every phase is a small pool of workers, so a registry of
100,000 tags costs a handful of tasks, not one per item.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from cleanup import policy
from cleanup.errors import (
    CleanupError,
    LockedError,
    RegistryOperationError,
    SafetyCapError,
    StopRunError,
)
from cleanup.model import PullRequest, PullRequests, PullRequestStatus, Registry, RepositoryListing
from cleanup.policy import Plan, RepositoryPlan, Step, StepKind
from cleanup.report import Outcome, StepResult
from cleanup.revalidation import Adjustment, revalidate
from cleanup.settings import Settings
from cleanup.telemetry import tracer

log = logging.getLogger(__name__)

_T = TypeVar("_T")

Clock = Callable[[], datetime]


@dataclass(slots=True)
class Progress:
    """Counts a progress display shows; updated in place as the run goes."""

    phase: str = "listing"
    repositories_listed: int = 0
    repositories_total: int | None = None
    lookups_done: int = 0
    lookups_total: int = 0
    steps_done: int = 0
    steps_total: int = 0


ProgressCallback = Callable[[Progress], None]


@dataclass(slots=True)
class RunResult:
    """Everything the report is built from."""

    started_at: datetime
    finished_at: datetime | None = None
    plan: Plan | None = None
    results: dict[Step, StepResult] = field(default_factory=dict)
    executed: bool = False
    stopped: str | None = None


async def run_cleanup(
    settings: Settings,
    registry: Registry,
    pull_requests: PullRequests,
    *,
    clock: Clock,
    progress: ProgressCallback | None = None,
) -> RunResult:
    """One run, start to finish; a stop (auth, unreachable, cap) ends it before any deletion."""
    run = _Run(settings, registry, pull_requests, clock, progress)
    with tracer.start_as_current_span("cleanup.run") as span:
        span.set_attribute("cleanup.registry", settings.registry)
        span.set_attribute("cleanup.dry_run", settings.dry_run)
        try:
            await run.phases()
        except StopRunError as exc:
            run.result.stopped = str(exc)
            span.record_exception(exc)
            log.error("run stopped before deleting anything: %s", exc)  # noqa: TRY400 - an expected stop needs no traceback
    run.result.finished_at = clock()
    return run.result


class _Run:
    """The state of one run as it moves through its phases."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        pull_requests: PullRequests,
        clock: Clock,
        progress: ProgressCallback | None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.pull_requests = pull_requests
        self.clock = clock
        self.result = RunResult(started_at=clock())
        self.state = Progress()
        self.notify = _notifier(progress, self.state)

    async def phases(self) -> None:
        listings, states = await self.scan()
        with tracer.start_as_current_span("cleanup.plan"):
            plan = policy.plan(listings, states, self.clock(), self.settings)
        self.result.plan = plan
        if plan.exceeds_cap(self.settings.max_deletions):
            raise SafetyCapError(plan.tags_deleted, self.settings.max_deletions)
        if self.settings.dry_run:
            return
        self.state.phase = "deleting"
        self.notify()
        with tracer.start_as_current_span("cleanup.delete"):
            self.result.results = await execute(
                plan.repositories,
                self.registry,
                self.settings.concurrency,
                self.state,
                self.notify,
            )
        self.result.executed = True

    async def scan(self) -> tuple[list[RepositoryListing], dict[int, PullRequest]]:
        """List repositories and look up pull requests, the two overlapping."""
        lookups = _Lookups(self.pull_requests, self.settings.concurrency, self.state, self.notify)
        listings: list[RepositoryListing] = []
        with tracer.start_as_current_span("cleanup.scan"):
            try:
                async with asyncio.TaskGroup() as group:
                    # The registry first: its chain of token requests and the catalog is what
                    # the rest waits for; Azure DevOps' first request runs in its gaps.
                    group.create_task(self.list_all(listings, lookups))
                    group.create_task(lookups.run())
            except* StopRunError as group_error:
                raise _first_leaf(group_error) from None
        return listings, lookups.states

    async def list_all(self, listings: list[RepositoryListing], lookups: _Lookups) -> None:
        try:
            with tracer.start_as_current_span("cleanup.list"):
                names = await self.repository_names()
                self.state.repositories_total = len(names)
                self.notify()
                await for_each(
                    names,
                    lambda name: self.list_one(name, listings, lookups),
                    self.settings.concurrency,
                )
        finally:
            lookups.close()

    async def repository_names(self) -> list[str]:
        """The selected repositories; without the whole catalog there is nothing to plan."""
        selected = self.settings.repository_selected
        try:
            return [n async for n in self.registry.list_repository_names() if selected(n)]
        except RegistryOperationError as exc:
            raise StopRunError(
                f"the registry's list of repositories could not be read: {exc}"
            ) from None

    async def list_one(
        self, name: str, listings: list[RepositoryListing], lookups: _Lookups
    ) -> None:
        listing = await _list_repository(self.registry, name)
        listings.append(listing)
        lookups.submit(policy.pr_ids([listing], self.settings))
        self.state.repositories_listed += 1
        self.notify()


def _first_leaf(group: BaseExceptionGroup[StopRunError]) -> StopRunError:
    first: StopRunError | BaseExceptionGroup[StopRunError] = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


async def _list_repository(registry: Registry, name: str) -> RepositoryListing:
    try:
        return await registry.list_repository(name)
    except StopRunError:
        raise
    except Exception as exc:  # noqa: BLE001 - one unreadable repository keeps all its tags
        log.warning("listing repository %s failed: %s", name, type(exc).__name__)
        return RepositoryListing(
            name, (), (), complete=False, error=f"listing failed: {type(exc).__name__}"
        )


class _Lookups:
    """Looks up each distinct pull request once, as listings name them."""

    def __init__(
        self,
        pull_requests: PullRequests,
        concurrency: int,
        state: Progress,
        notify: Callable[[], None],
    ) -> None:
        self._pull_requests = pull_requests
        self._concurrency = concurrency
        self._queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._seen: set[int] = set()
        self._state = state
        self._notify = notify
        self.states: dict[int, PullRequest] = {}

    def submit(self, ids: Iterable[int]) -> None:
        for number in ids:
            if number not in self._seen:
                self._seen.add(number)
                self._queue.put_nowait(number)
                self._state.lookups_total += 1

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def run(self) -> None:
        with tracer.start_as_current_span("cleanup.lookup"):
            await self._pull_requests.check_access()
            await for_each(self._drain(), self._look_up, self._concurrency)

    async def _drain(self) -> AsyncIterator[int]:
        while (number := await self._queue.get()) is not None:
            yield number

    async def _look_up(self, number: int) -> None:
        try:
            self.states[number] = await self._pull_requests.look_up(number)
        except StopRunError:
            raise
        except Exception as exc:  # noqa: BLE001 - one failed lookup keeps its tags, never stops the run
            log.warning("lookup of pull request %d failed: %s", number, type(exc).__name__)
            self.states[number] = PullRequest(
                number, PullRequestStatus.UNKNOWN, error=f"lookup failed: {type(exc).__name__}"
            )
        self._state.lookups_done += 1
        self._notify()


# --- execute: deletions, parents before the steps that wait for them --------------------------


async def execute(
    repositories: Iterable[RepositoryPlan],
    registry: Registry,
    concurrency: int,
    state: Progress | None = None,
    notify: Callable[[], None] | None = None,
) -> dict[Step, StepResult]:
    """Run every repository's steps, each repository re-checked just before its deletions."""
    plans = [r for r in repositories if r.steps]
    if state is not None:
        state.steps_total = sum(len(r.steps) for r in plans)
    return await _Executor(registry, concurrency, state, notify).run(plans)


async def _recheck(registry: Registry, repository: RepositoryPlan) -> dict[Step, StepResult]:
    """What the fresh listing changes; every manifest step kept when it cannot be read."""
    if not any(s.kind is StepKind.DELETE_MANIFEST for s in repository.steps):
        return {}
    try:
        fresh = await registry.list_manifests(repository.repository)
        log.debug("re-read %s: %d manifests", repository.repository, len(fresh))
        changes = revalidate(repository.steps, fresh)
    except Exception as exc:  # noqa: BLE001 - whatever the cause, no manifest goes unchecked
        detail = str(exc) if isinstance(exc, CleanupError) else type(exc).__name__
        log.warning("re-reading %s before deleting failed: %s", repository.repository, detail)
        message = f"could not re-read the repository just before deleting: {detail}"
        return {
            s: StepResult(s, Outcome.SKIPPED, message)
            for s in repository.steps
            if s.kind is StepKind.DELETE_MANIFEST
        }
    outcome = {
        Adjustment.TAGS_ONLY: Outcome.TAGS_ONLY,
        Adjustment.KEPT: Outcome.KEPT,
        Adjustment.LOCKED: Outcome.LOCKED,
    }
    return {
        step: StepResult(step, outcome[change.adjustment], change.reason)
        for step, change in changes.items()
    }


_KEPT_ON_PURPOSE = frozenset({Outcome.KEPT, Outcome.TAGS_ONLY, Outcome.LOCKED})
"""Outcomes the re-read decides: the manifest stays because something needs it."""

_STEP, _RECHECK, _END = 0, 1, 2
"""Work priorities: ready deletions first, so a repository is re-read as late as possible."""

_Work = tuple[int, int, Step | RepositoryPlan | None]


class _Executor:
    """Every repository's steps in one pool of workers: leaves before what waits for them.

    A repository with manifest deletions is re-read first (`_recheck`); its steps become ready
    only then, with the changes the re-read decided: TAGS_ONLY steps delete their tags instead
    of the manifest, KEPT, LOCKED and SKIPPED ones are settled without a request. Ready
    deletions go before re-reads, so the re-read of a repository happens close to its own
    deletions, and no repository waits for another's. A step waiting for a manifest whose
    deletion failed is skipped (its tags stay for the next run), unless its change already
    decided it.
    """

    def __init__(
        self,
        registry: Registry,
        concurrency: int,
        state: Progress | None,
        notify: Callable[[], None] | None,
    ) -> None:
        self._registry = registry
        self._concurrency = concurrency
        self._state = state
        self._notify = notify
        self._changes: dict[Step, StepResult] = {}
        self._outcomes: dict[Step, StepResult] = {}
        self._work: asyncio.PriorityQueue[_Work] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._remaining = 0
        self._graph = _StepGraph([])

    async def run(self, plans: Sequence[RepositoryPlan]) -> dict[Step, StepResult]:
        self._graph = _StepGraph([s for plan in plans for s in plan.steps])
        self._remaining = len(self._graph.steps)
        for plan in plans:
            if any(s.kind is StepKind.DELETE_MANIFEST for s in plan.steps):
                self._put(_RECHECK, plan)
            else:
                self._release(plan)
        for orphan in self._graph.take_blocked():
            self._settle(StepResult(orphan, Outcome.SKIPPED, self._graph.blocker(orphan)))
        if self._remaining:
            await for_each(self._ready(), self._do, self._concurrency)
        return self._outcomes

    def _put(self, priority: int, item: Step | RepositoryPlan | None) -> None:
        self._work.put_nowait((priority, next(self._order), item))

    def _release(self, plan: RepositoryPlan) -> None:
        for step in plan.steps:
            if not step.after:
                self._put(_STEP, step)

    def _settle(self, result: StepResult) -> None:
        self._outcomes[result.step] = result
        self._remaining -= 1
        if self._state is not None:
            self._state.steps_done += 1
        # What waits for a step may run once it is deleted, or once the re-read decided to
        # keep it (a platform manifest another index uses lets its old index go; for a kept
        # signature the re-read already keeps the image). Anything else, a lock found only
        # now included, holds what waits: its tags stay, and the next run plans it anew.
        cleared = result.outcome is Outcome.DONE or (
            result.step in self._changes and result.outcome in _KEPT_ON_PURPOSE
        )
        for dependant in self._graph.settled(result.step, cleared, exempt=self._changes):
            self._put(_STEP, dependant)
        for skipped in self._graph.take_blocked():
            self._settle(StepResult(skipped, Outcome.SKIPPED, self._graph.blocker(skipped)))
        if self._remaining == 0:
            self._put(_END, None)

    async def _ready(self) -> AsyncIterator[Step | RepositoryPlan]:
        while (item := (await self._work.get())[2]) is not None:
            yield item

    async def _do(self, item: Step | RepositoryPlan) -> None:
        if isinstance(item, RepositoryPlan):
            self._changes.update(await _recheck(self._registry, item))
            self._release(item)
            return
        change = self._changes.get(item)
        if change is None:
            result = await _delete(self._registry, item)
        elif change.outcome is Outcome.TAGS_ONLY:
            result = await _delete_tags_only(self._registry, change)
        else:
            result = change
        self._settle(result)
        if self._notify is not None:
            self._notify()


async def _delete(registry: Registry, step: Step) -> StepResult:
    try:
        if step.kind is StepKind.DELETE_TAG:
            assert step.tag is not None  # noqa: S101 - a tag step names its tag  # nosec B101
            await registry.delete_tag(step.repository, step.tag)
        else:
            await registry.delete_manifest(step.repository, step.digest)
    except LockedError as exc:
        return StepResult(step, Outcome.LOCKED, str(exc))
    except (RegistryOperationError, StopRunError) as exc:
        # Mid-deletion, a refused credential or a lost connection fails this step only.
        log.warning("deleting %s failed: %s", step.target, exc)
        return StepResult(step, Outcome.FAILED, str(exc))
    except Exception as exc:  # noqa: BLE001 - an unexpected answer fails this step, closed
        log.warning("deleting %s failed: %s", step.target, type(exc).__name__)
        return StepResult(step, Outcome.FAILED, f"unexpected {type(exc).__name__}")
    log.debug("deleted %s (%s)", step.target, step.reason)
    return StepResult(step, Outcome.DONE)


async def _delete_tags_only(registry: Registry, change: StepResult) -> StepResult:
    """The manifest stays: remove just the step's pull-request tags from it, one by one."""
    step = change.step
    deleted: list[str] = []
    for tag in step.tags:
        tag_step = Step(StepKind.DELETE_TAG, step.repository, step.digest, tag=tag, tags=(tag,))
        result = await _delete(registry, tag_step)
        if result.outcome is not Outcome.DONE:
            return StepResult(step, result.outcome, result.message, tuple(deleted))
        deleted.append(tag)
    return change


class _StepGraph:
    """Which steps wait for which manifest deletions, within each repository."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self._waiting: dict[Step, int] = {}
        self._dependants: dict[tuple[str, str], list[Step]] = defaultdict(list)
        self._blocked: list[Step] = []
        self._blockers: dict[Step, str] = {}
        manifests = {(s.repository, s.digest) for s in steps if s.kind is StepKind.DELETE_MANIFEST}
        for step in steps:
            if not step.after:
                continue
            missing = [d for d in step.after if (step.repository, d) not in manifests]
            if missing:
                self._blockers[step] = f"it waits for {missing[0]}, which is not planned"
                self._blocked.append(step)
                continue
            self._waiting[step] = len(step.after)
            for digest in step.after:
                self._dependants[(step.repository, digest)].append(step)

    # A step blocked at the start (it waits for an unplanned digest) has an `after`, so it
    # is never released as ready: take_blocked hands it over exactly once.

    def settled(
        self, step: Step, cleared: bool, exempt: Mapping[Step, object] | None = None
    ) -> list[Step]:
        """The steps that became ready; steps that can no longer run go to the blocked list.

        A dependant in `exempt` (its result is decided already) becomes ready either way.
        """
        if step.kind is not StepKind.DELETE_MANIFEST:
            return []
        ready = []
        for dependant in self._dependants.pop((step.repository, step.digest), []):
            if dependant in self._blockers:
                continue
            if not cleared and (exempt is None or dependant not in exempt):
                self._blockers[dependant] = f"deleting {step.target} did not succeed"
                self._blocked.append(dependant)
                continue
            self._waiting[dependant] -= 1
            if self._waiting[dependant] == 0:
                ready.append(dependant)
        return ready

    def take_blocked(self) -> list[Step]:
        blocked, self._blocked = self._blocked, []
        return blocked

    def blocker(self, step: Step) -> str:
        return self._blockers[step]


# --- small helpers ---------------------------------------------------------------------------


async def for_each(
    items: Iterable[_T] | AsyncIterator[_T], work: Callable[[_T], Awaitable[None]], limit: int
) -> None:
    """Apply `work` to every item with at most `limit` in flight, as a fixed pool of workers."""
    source = _aiter(items)
    lock = asyncio.Lock()

    async def next_item() -> tuple[bool, _T | None]:
        async with lock:
            try:
                return True, await anext(source)
            except StopAsyncIteration:
                return False, None

    async def worker() -> None:
        while True:
            more, item = await next_item()
            if not more:
                return
            await work(item)  # type: ignore[arg-type]

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, limit)):
            group.create_task(worker())


async def _aiter(items: Iterable[_T] | AsyncIterator[_T]) -> AsyncIterator[_T]:
    if isinstance(items, AsyncIterator):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _notifier(progress: ProgressCallback | None, state: Progress) -> Callable[[], None]:
    if progress is None:
        return lambda: None
    return lambda: progress(state)
