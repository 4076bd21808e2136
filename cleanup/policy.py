"""Pure policy: which tags and manifests a run deletes, and in which order. No I/O, no clock.

`plan(listings, states, now, rules)` implements the contract's "What a run does", steps 2, 4,
5 and 6. Choices the contract leaves open:

- Reasons name the first thing that keeps a tag: an incomplete listing, then the pull request
  (active, not found with keep, lookup failed, within the grace period), then a lock.
- A locked manifest keeps its pull-request tags too ("manifest is locked").
- A completed or abandoned pull request without a closing date is deleted only when the grace
  period is 0; otherwise it is kept (its age cannot be proven).
- A referrer (a manifest whose `subject` is another) is deleted with its subject. A referrer
  that cannot be deleted (locked, or carrying a tag that stays) keeps its subject manifest:
  only the subject's tags are removed, so no attached signature or SBOM is left dangling.
- A platform manifest shared by two indexes is deleted only when both indexes are.
- Manifest steps are ordered leaves first: an index after its platform manifests, a subject
  after its referrers. `Step.after` names the manifest steps (digests) that must succeed
  first, so a failed child never leaves an untagged manifest that later runs would not touch:
  its parent keeps its tags and the next run retries both. (Between the two deletions the
  parent, which carries only closed pull requests' tags, may point at a deleted child.)
"""

from __future__ import annotations

import enum
import gc
import re
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import NamedTuple

from cleanup.model import Manifest, PullRequest, PullRequestStatus, RepositoryListing, Tag
from cleanup.settings import MAX_PR_ID, MAX_TAG_LENGTH, Settings, UnknownPullRequest


class Action(enum.Enum):
    DELETE = "delete"
    KEEP = "keep"


class StepKind(enum.Enum):
    DELETE_TAG = "deleteTag"
    DELETE_MANIFEST = "deleteManifest"


@dataclass(frozen=True, slots=True)
class PolicyRules:
    """The settings the policy reads."""

    tag_pattern: re.Pattern[str]
    grace_period: timedelta = timedelta(0)
    grace_period_text: str = "0"
    unknown_pr: UnknownPullRequest = UnknownPullRequest.KEEP
    delete_manifests: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> PolicyRules:
        return cls(
            tag_pattern=settings.tag_pattern,
            grace_period=settings.grace_period,
            grace_period_text=settings.grace_period_text,
            unknown_pr=settings.unknown_pr,
            delete_manifests=settings.delete_manifests,
        )


class TagDecision(NamedTuple):
    """What the plan does with one pull-request tag, and why.

    TagDecision and Step are NamedTuples, not frozen dataclasses: as immutable and as lean,
    but built four times faster, and a run builds one per tag.
    """

    repository: str
    tag: str
    digest: str
    pr_id: int
    pr_status: PullRequestStatus | None
    """None when the pull request was not looked up (its listing was incomplete)."""
    action: Action
    reason: str
    deleted_by: StepKind | None = None
    """DELETE_TAG or DELETE_MANIFEST (the tag goes with its manifest); None when kept."""
    locked: bool = False
    """Kept because the tag or its manifest is locked."""


class Step(NamedTuple):
    """One registry deletion. Within a repository, steps are listed in executable order."""

    kind: StepKind
    repository: str
    digest: str
    tag: str | None = None
    """The tag a DELETE_TAG step removes; None for a manifest."""
    tags: tuple[str, ...] = ()
    """Pull-request tags this step removes (a manifest deletion removes all of its tags)."""
    after: tuple[str, ...] = ()
    """Digests of manifest steps in the same repository that must succeed first."""
    reason: str = ""

    @property
    def target(self) -> str:
        """`repo:tag` or `repo@digest`, as people write registry references."""
        if self.tag is not None:
            return f"{self.repository}:{self.tag}"
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True, slots=True)
class RepositoryPlan:
    repository: str
    tags_scanned: int
    decisions: tuple[TagDecision, ...]
    """Pull-request tags only, sorted by tag."""
    steps: tuple[Step, ...]
    complete: bool = True
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """Every decision and step of a run, by repository (sorted by name)."""

    repositories: tuple[RepositoryPlan, ...] = ()
    lookup_failures: tuple[PullRequest, ...] = ()
    """Pull requests whose lookup failed (status UNKNOWN), once each, by id."""

    @property
    def decisions(self) -> Iterable[TagDecision]:
        return (d for repository in self.repositories for d in repository.decisions)

    @property
    def steps(self) -> Iterable[Step]:
        return (s for repository in self.repositories for s in repository.steps)

    @property
    def tags_scanned(self) -> int:
        return sum(repository.tags_scanned for repository in self.repositories)

    @property
    def pull_request_tags(self) -> int:
        return sum(len(repository.decisions) for repository in self.repositories)

    @property
    def pull_requests(self) -> int:
        """Distinct pull requests named by the pull-request tags."""
        return len({d.pr_id for d in self.decisions})

    @property
    def tags_deleted(self) -> int:
        """Pull-request tags the plan deletes: what the safety cap counts."""
        return sum(1 for d in self.decisions if d.action is Action.DELETE)

    @property
    def manifests_deleted(self) -> int:
        return sum(1 for s in self.steps if s.kind is StepKind.DELETE_MANIFEST)

    def exceeds_cap(self, cap: int) -> bool:
        """True when the plan deletes more tags than CLEANUP_MAX_DELETIONS allows."""
        return self.tags_deleted > cap


# --- tags -------------------------------------------------------------------------------------


def pr_id(tag_name: str, pattern: re.Pattern[str]) -> int | None:
    """The pull request id a tag names under `pattern`, or None when it is not a PR tag.

    The match is in full and bounded: a tag longer than 128 characters (more than ACR allows),
    or whose `pr` group is not a positive 32-bit number in ASCII digits, is not a PR tag.
    """
    if len(tag_name) > MAX_TAG_LENGTH:
        return None
    match = pattern.fullmatch(tag_name)
    return None if match is None else _number(match["pr"])


def _number(digits: str | None) -> int | None:
    if not digits or len(digits) > 10 or not digits.isascii() or not digits.isdigit():
        return None
    number = int(digits)
    return number if 0 < number <= MAX_PR_ID else None


def pr_ids(listings: Iterable[RepositoryListing], rules: PolicyRules | Settings) -> set[int]:
    """The distinct pull requests to look up: those named by tags of complete listings."""
    pattern = rules.tag_pattern
    ids = set()
    for listing in listings:
        if listing.complete:
            for tag in listing.tags:
                number = pr_id(tag.name, pattern)
                if number is not None:
                    ids.add(number)
    return ids


class _Verdicts:
    """Per pull request: (status, delete?, reason), computed once per id and shared."""

    def __init__(
        self, states: Mapping[int, PullRequest], now: datetime, rules: PolicyRules
    ) -> None:
        self.states = states
        self.now = now
        self.rules = rules
        self.cache: dict[int, tuple[PullRequestStatus, bool, str]] = {}
        self.failures: list[PullRequest] = []

    def __call__(self, number: int) -> tuple[PullRequestStatus, bool, str]:
        verdict = self.cache.get(number)
        if verdict is None:
            pull = self.states.get(number)
            verdict = self.cache[number] = self._judge(pull)
            if pull is not None and verdict[0] is PullRequestStatus.UNKNOWN:
                self.failures.append(pull)
        return verdict

    def _judge(self, pull: PullRequest | None) -> tuple[PullRequestStatus, bool, str]:
        if pull is None:
            return PullRequestStatus.UNKNOWN, False, "lookup failed: no answer for this id"
        status = pull.status
        if status is PullRequestStatus.ACTIVE:
            return status, False, "pull request active"
        if status is PullRequestStatus.NOT_FOUND:
            rule = self.rules.unknown_pr
            where = f" {pull.where}" if pull.where else ""
            reason = f"pull request not found{where}; CLEANUP_UNKNOWN_PR={rule.value}"
            return status, rule is UnknownPullRequest.DELETE, reason
        if status.is_closed:
            return (status, *self._closed(pull))
        return PullRequestStatus.UNKNOWN, False, f"lookup failed: {pull.error or 'no status'}"

    def _closed(self, pull: PullRequest) -> tuple[bool, str]:
        grace = self.rules.grace_period
        word = pull.status.value
        closed = pull.closed_at
        if closed is None:
            if grace <= timedelta(0):
                return True, f"pull request {word}"
            return False, f"pull request {word}, closing date unknown; kept for the grace period"
        if closed.tzinfo is None:
            closed = closed.replace(tzinfo=UTC)
        day = (closed if closed.tzinfo is UTC else closed.astimezone(UTC)).date().isoformat()
        if grace <= timedelta(0) or self.now - closed >= grace:
            return True, f"pull request {word} {day}"
        return False, (
            f"pull request {word} {day}, within the {self.rules.grace_period_text} grace period"
        )


# --- the plan ---------------------------------------------------------------------------------


def plan(
    listings: Sequence[RepositoryListing],
    states: Mapping[int, PullRequest],
    now: datetime,
    rules: PolicyRules | Settings,
) -> Plan:
    """Decide every pull-request tag of `listings` and order the deletions that carry it out."""
    policy = rules if isinstance(rules, PolicyRules) else PolicyRules.from_settings(rules)
    verdicts = _Verdicts(states, now, policy)
    # Planning allocates a few objects per tag and no reference cycles; the cyclic collector
    # would rescan the whole listing many times over (a third of the time at 100,000 tags).
    collecting = gc.isenabled()
    gc.disable()
    try:
        repositories = tuple(
            _plan_repository(listing, verdicts, policy)
            for listing in sorted(listings, key=_BY_NAME)
        )
    finally:
        if collecting:
            gc.enable()
    failures = tuple(sorted(verdicts.failures, key=_BY_ID))
    return Plan(repositories=repositories, lookup_failures=failures)


_BY_NAME = attrgetter("name")
_BY_ID = attrgetter("id")
_DELETE, _KEEP = Action.DELETE, Action.KEEP
_BY_TAG, _BY_MANIFEST = StepKind.DELETE_TAG, StepKind.DELETE_MANIFEST
_TAG_LOCKED = "tag is locked (deleteEnabled false)"
_MANIFEST_LOCKED = "manifest is locked"
_ALL_TAGS_GO = "every tag of the manifest is deleted"


def _incomplete(
    listing: RepositoryListing, states: Mapping[int, PullRequest], rules: PolicyRules
) -> RepositoryPlan:
    """An incomplete listing: every pull-request tag is kept, with the listing's error."""
    reason = f"repository listing incomplete: {listing.error or 'the listing ended early'}"
    decisions = []
    for tag in sorted(listing.tags, key=_BY_NAME):
        number = pr_id(tag.name, rules.tag_pattern)
        if number is not None:
            status = states[number].status if number in states else None
            decisions.append(
                TagDecision(listing.name, tag.name, tag.digest, number, status, _KEEP, reason)
            )
    return RepositoryPlan(
        listing.name, len(listing.tags), tuple(decisions), (), False, listing.error
    )


def _plan_repository(
    listing: RepositoryListing, verdicts: _Verdicts, rules: PolicyRules
) -> RepositoryPlan:
    if not listing.complete:
        return _incomplete(listing, verdicts.states, rules)
    name = listing.name
    fullmatch = rules.tag_pattern.fullmatch
    manifests = {m.digest: m for m in listing.manifests}
    cache = verdicts.cache
    # Kept tags are decided at once; deleted ones wait until we know which manifests go.
    decisions: list[TagDecision] = []
    deleted: list[tuple[int, Tag, int, PullRequestStatus, str]] = []
    deleting: dict[str, str] = {}  # tag -> digest
    number_of, longest = _number, MAX_TAG_LENGTH
    for tag in sorted(listing.tags, key=_BY_NAME):
        tag_name = tag.name
        if len(tag_name) > longest or (match := fullmatch(tag_name)) is None:
            continue
        number = number_of(match["pr"])
        if number is None:
            continue
        status, delete, reason = cache.get(number) or verdicts(number)
        if delete:
            locked = (
                _TAG_LOCKED
                if not tag.delete_enabled
                else _MANIFEST_LOCKED
                if (m := manifests.get(tag.digest)) is not None and not m.delete_enabled
                else None
            )
            if locked is None:
                deleting[tag.name] = tag.digest
                deleted.append((len(decisions), tag, number, status, reason))
                decisions.append(None)  # type: ignore[arg-type] # filled in below
                continue
            decision = TagDecision(
                name, tag.name, tag.digest, number, status, _KEEP, locked, None, True
            )
        else:
            decision = TagDecision(name, tag.name, tag.digest, number, status, _KEEP, reason)
        decisions.append(decision)

    doomed = _manifests_to_delete(listing, manifests, deleting) if rules.delete_manifests else {}
    steps: list[Step] = []
    for position, tag, number, status, reason in deleted:
        by = _BY_MANIFEST if tag.digest in doomed else _BY_TAG
        decisions[position] = TagDecision(
            name, tag.name, tag.digest, number, status, _DELETE, reason, by
        )
        if by is _BY_TAG:
            steps.append(Step(_BY_TAG, name, tag.digest, tag.name, (tag.name,), (), reason))
    if doomed:
        pr_tags_of: dict[str, list[str]] = defaultdict(list)
        for tag_name, digest in deleting.items():
            if digest in doomed:
                pr_tags_of[digest].append(tag_name)
        steps.extend(
            Step(_BY_MANIFEST, name, digest, None, tuple(pr_tags_of.get(digest, ())), after, why)
            for digest, (after, why) in doomed.items()
        )
    return RepositoryPlan(name, len(listing.tags), tuple(decisions), tuple(steps))


# --- manifests --------------------------------------------------------------------------------


class _Graph:
    """The reverse edges of one repository's manifests: who uses a digest, who refers to it."""

    __slots__ = ("manifests", "parents", "referrers")

    def __init__(self, manifests: Mapping[str, Manifest]) -> None:
        self.manifests = manifests
        self.parents: dict[str, list[str]] = defaultdict(list)
        self.referrers: dict[str, list[str]] = defaultdict(list)
        for digest, manifest in manifests.items():
            if manifest.references:
                for child in manifest.references:
                    if child != digest:
                        self.parents[child].append(digest)
            subject = manifest.subject
            if subject is not None and subject != digest:
                self.referrers[subject].append(digest)

    def dependants(self, digest: str) -> tuple[str, ...]:
        """Platform manifests and referrers of `digest`: what deleting it may take along."""
        references = self.manifests[digest].references
        attached = self.referrers.get(digest)
        if not attached:
            return references  # most images: no platform manifests, nothing attached
        return (*references, *attached)


def _manifests_to_delete(
    listing: RepositoryListing,
    manifests: Mapping[str, Manifest],
    deleting: Mapping[str, str],
) -> dict[str, tuple[tuple[str, ...], str]]:
    """Digest -> (digests it waits for, reason), in executable order (leaves first)."""
    if not deleting:
        return {}
    tag_count = Counter(tag.digest for tag in listing.tags)
    deleted_count = Counter(deleting.values())
    gone = deleting.__contains__

    def all_tags_go(digest: str) -> bool:
        manifest = manifests.get(digest)
        return (
            manifest is not None
            and manifest.delete_enabled
            and tag_count.get(digest, 0) == deleted_count.get(digest, 0)
            and all(map(gone, manifest.tags))
        )

    roots = [digest for digest in deleted_count if all_tags_go(digest)]
    if not roots:
        return {}
    graph = _Graph(manifests)
    parents, referrers = graph.parents, graph.referrers

    # Propose the tagged manifests whose tags all go and what hangs off them (untagged platform
    # manifests, referrers); then drop, until stable, whatever something kept still needs.
    proposed: set[str] = set()
    todo = roots
    while todo:
        digest = todo.pop()
        if digest not in proposed:
            proposed.add(digest)
            todo.extend(filter(all_tags_go, graph.dependants(digest)))

    def tagged(digest: str) -> bool:
        return digest in tag_count or bool(manifests[digest].tags)

    def needed(digest: str) -> bool:
        users = parents.get(digest)
        if users and not proposed.issuperset(users):
            return True  # an index that stays uses it
        attached = referrers.get(digest)
        if attached and not proposed.issuperset(attached):
            return True  # a referrer that stays would lose its subject
        subject = manifests[digest].subject
        # An untagged referrer stays with a subject that stays.
        return subject is not None and subject not in proposed and not tagged(digest)

    todo = list(proposed)
    while todo:
        digest = todo.pop()
        if digest in proposed and needed(digest):
            proposed.discard(digest)
            todo.extend(graph.dependants(digest))
            subject = manifests[digest].subject
            if subject is not None:
                todo.append(subject)

    return _ordered(proposed, graph, tagged)


def _ordered(
    doomed: set[str], graph: _Graph, tagged: Callable[[str], bool]
) -> dict[str, tuple[tuple[str, ...], str]]:
    """Kahn's order over "waits for" edges, leaves first; anything on a cycle is kept.

    A manifest waits for its platform manifests and referrers that go too: were it deleted
    first and one of them then failed, that one would be left untagged, which later runs leave
    alone. Deleted last, a parent whose child failed keeps its tags, and the next run retries.
    """
    manifests, parents = graph.manifests, graph.parents
    waits: dict[str, tuple[str, ...]] = {}
    dependants: dict[str, list[str]] = defaultdict(list)
    roots = []
    for digest in doomed:
        hanging = graph.dependants(digest)
        before = {d for d in hanging if d in doomed and d != digest} if hanging else None
        if not before:
            roots.append(digest)
            continue
        waits[digest] = after = tuple(sorted(before))
        for earlier in after:
            dependants[earlier].append(digest)
    pending = {digest: len(before) for digest, before in waits.items()}
    roots.sort()
    ready = deque(roots)
    ordered: dict[str, tuple[tuple[str, ...], str]] = {}
    no_wait: tuple[str, ...] = ()
    while ready:
        digest = ready.popleft()
        used_by = parents.get(digest)
        users = tuple(sorted(p for p in used_by if p in doomed)) if used_by else no_wait
        reason = _manifest_reason(manifests[digest], users, doomed, tagged)
        ordered[digest] = (waits.get(digest, no_wait), reason)
        later = dependants.get(digest)
        if later:
            for dependant in sorted(later) if len(later) > 1 else later:
                pending[dependant] -= 1
                if pending[dependant] == 0:
                    ready.append(dependant)
    return ordered


def _manifest_reason(
    manifest: Manifest, users: tuple[str, ...], doomed: set[str], tagged: Callable[[str], bool]
) -> str:
    if tagged(manifest.digest):
        return _ALL_TAGS_GO
    if manifest.subject is not None and manifest.subject in doomed:
        return f"attached to deleted manifest {manifest.subject}"
    if users:
        return f"platform manifest of deleted index {', '.join(users)}"
    return _ALL_TAGS_GO
