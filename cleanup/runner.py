"""The one module that knows the order of a run: scan, look up, plan, execute.

Listing runs across repositories at once; pull-request lookups start as soon as the first
listing names a pull request, so the two overlap. Deletions start only once the whole plan is
known and within the safety cap. Every phase is a small pool of workers, so a registry of
100,000 tags costs a handful of tasks, not one per item.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from opentelemetry import trace

from cleanup import policy
from cleanup.errors import LockedError, RegistryOperationError, SafetyCapError, StopRunError
from cleanup.model import PullRequest, PullRequests, PullRequestStatus, Registry, RepositoryListing
from cleanup.policy import Plan, RepositoryPlan, Step, StepKind
from cleanup.report import Outcome, StepResult
from cleanup.revalidation import Adjustment, revalidate
from cleanup.settings import Settings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("cleanup")

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
                    group.create_task(lookups.run())
                    group.create_task(self.list_all(listings, lookups))
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
    results: dict[Step, StepResult] = {}

    async def one(repository: RepositoryPlan) -> None:
        changes = await _recheck(registry, repository)
        executor = _Executor(registry, concurrency, changes, state, notify)
        results.update(await executor.run(repository.steps))

    await for_each(plans, one, concurrency)
    return results


async def _recheck(registry: Registry, repository: RepositoryPlan) -> dict[Step, StepResult]:
    """What the fresh listing changes; every manifest step kept when it cannot be read."""
    if not any(s.kind is StepKind.DELETE_MANIFEST for s in repository.steps):
        return {}
    try:
        fresh = await registry.list_manifests(repository.repository)
    except (RegistryOperationError, StopRunError) as exc:
        log.warning("re-reading %s before deleting failed: %s", repository.repository, exc)
        message = f"could not re-read the repository just before deleting: {exc}"
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
        for step, change in revalidate(repository.steps, fresh).items()
    }


class _Executor:
    """One repository's steps: parents before the steps that wait for them.

    `changes` are results decided before any request: TAGS_ONLY steps delete their tags
    instead of the manifest; the others (KEPT, LOCKED, SKIPPED) are settled without a request.
    A step waiting for a manifest that was not deleted is skipped, unless the change already
    keeps it.
    """

    def __init__(
        self,
        registry: Registry,
        concurrency: int,
        changes: dict[Step, StepResult],
        state: Progress | None,
        notify: Callable[[], None] | None,
    ) -> None:
        self._registry = registry
        self._concurrency = concurrency
        self._changes = changes
        self._state = state
        self._notify = notify
        self._outcomes: dict[Step, StepResult] = {}
        self._ready: asyncio.Queue[Step | None] = asyncio.Queue()
        self._remaining = 0
        self._graph = _StepGraph([])

    async def run(self, steps: Sequence[Step]) -> dict[Step, StepResult]:
        self._graph = _StepGraph(list(steps))
        self._remaining = len(steps)
        for step in self._graph.initial():
            self._ready.put_nowait(step)
        for orphan in self._graph.take_blocked():
            self._settle(StepResult(orphan, Outcome.SKIPPED, self._graph.blocker(orphan)))
        if self._remaining:
            await for_each(self._steps_ready(), self._run_one, self._concurrency)
        return self._outcomes

    def _settle(self, result: StepResult) -> None:
        self._outcomes[result.step] = result
        self._remaining -= 1
        if self._state is not None:
            self._state.steps_done += 1
        done = result.outcome is Outcome.DONE
        for dependant in self._graph.settled(result.step, done, exempt=self._changes):
            self._ready.put_nowait(dependant)
        for skipped in self._graph.take_blocked():
            self._settle(StepResult(skipped, Outcome.SKIPPED, self._graph.blocker(skipped)))
        if self._remaining == 0:
            self._ready.put_nowait(None)

    async def _steps_ready(self) -> AsyncIterator[Step]:
        while (step := await self._ready.get()) is not None:
            yield step

    async def _run_one(self, step: Step) -> None:
        change = self._changes.get(step)
        if change is None:
            result = await _delete(self._registry, step)
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
    return StepResult(step, Outcome.DONE)


async def _delete_tags_only(registry: Registry, change: StepResult) -> StepResult:
    """The manifest stays: remove just the step's pull-request tags from it, one by one."""
    step = change.step
    for tag in step.tags:
        tag_step = Step(StepKind.DELETE_TAG, step.repository, step.digest, tag=tag, tags=(tag,))
        result = await _delete(registry, tag_step)
        if result.outcome is not Outcome.DONE:
            return StepResult(step, result.outcome, result.message)
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

    def initial(self) -> list[Step]:
        return [s for s in self.steps if not s.after]

    # A step blocked at the start (it waits for an unplanned digest) is never initial and
    # never becomes ready: take_blocked hands it over exactly once.

    def settled(
        self, step: Step, succeeded: bool, exempt: Mapping[Step, object] | None = None
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
            if not succeeded and (exempt is None or dependant not in exempt):
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
