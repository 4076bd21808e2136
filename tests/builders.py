"""Builders of the domain types for tests: short to write, obvious to read.

    listing("web/api", manifest(d1, "PR12", "latest"), manifest(d2, "PR13"))
    states(pr(12, "completed", closed="2026-11-30"), pr(13, "active"))
    plan_of([that_listing], those_states)

Digests d1..d9 are fixed, valid sha256 digests; `digest(n)` makes more.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from cleanup.model import Manifest, PullRequest, PullRequestStatus, RepositoryListing, Tag
from cleanup.policy import Plan, PolicyRules, plan
from cleanup.settings import DEFAULT_TAG_PATTERN, UnknownPullRequest, parse_tag_pattern

NOW = datetime(2026, 12, 4, 2, 0, tzinfo=UTC)
"""The injected clock of policy tests: 2026-12-04T02:00:00Z."""

REPOSITORY = "web/api"


def digest(n: int) -> str:
    """A valid, recognisable sha256 digest: `sha256:` + n in hex, zero-padded to 64 digits."""
    return f"sha256:{n:064x}"


d1, d2, d3, d4, d5, d6, d7, d8, d9 = (digest(n) for n in range(1, 10))


def tag(
    name: str,
    *,
    digest: str = d1,
    repository: str = REPOSITORY,
    locked: bool = False,
    last_updated: datetime | None = None,
) -> Tag:
    """A tag; `locked=True` means deleteEnabled false."""
    return Tag(repository, name, digest, not locked, last_updated)


def manifest(
    digest: str,
    *tags: str,
    references: tuple[str, ...] = (),
    subject: str | None = None,
    locked: bool = False,
    repository: str = REPOSITORY,
    media_type: str | None = None,
) -> Manifest:
    """A manifest carrying `tags`; `references` makes it an index, `subject` a referrer."""
    return Manifest(repository, digest, tuple(tags), references, subject, not locked, media_type)


def index(digest: str, *tags: str, children: tuple[str, ...], locked: bool = False) -> Manifest:
    """An image index (multi-platform manifest) whose platform manifests are `children`."""
    return manifest(digest, *tags, references=children, locked=locked)


def listing(
    name: str = REPOSITORY,
    *items: Manifest | Tag,
    complete: bool = True,
    error: str | None = None,
) -> RepositoryListing:
    """A repository listing. Tags come from the manifests' tags unless given as Tag items
    (to lock one); every item is moved into repository `name`."""
    manifests = [
        Manifest(name, m.digest, m.tags, m.references, m.subject, m.delete_enabled, m.media_type)
        for m in items
        if isinstance(m, Manifest)
    ]
    explicit = {t.name: t for t in items if isinstance(t, Tag)}
    tags = [explicit.pop(t, Tag(name, t, m.digest)) for m in manifests for t in m.tags]
    tags.extend(explicit.values())
    tags = [Tag(name, t.name, t.digest, t.delete_enabled, t.last_updated) for t in tags]
    return RepositoryListing(name, tuple(tags), tuple(manifests), complete, error)


def _moment(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def pr(
    number: int,
    status: str | PullRequestStatus,
    *,
    closed: datetime | str | None = None,
    closed_ago: timedelta | None = None,
    error: str | None = None,
) -> PullRequest:
    """A pull request; `closed`: ISO date or time (UTC when naive); `closed_ago`: before NOW.

    Closed pull requests default to closed 30 days before NOW; `status="unknown"` carries an error.
    """
    state = status if isinstance(status, PullRequestStatus) else PullRequestStatus(status)
    closed_at = _moment(closed)
    if closed_ago is not None:
        closed_at = NOW - closed_ago
    if closed_at is None and state.is_closed:
        closed_at = NOW - timedelta(days=30)
    if not state.is_closed:
        closed_at = None
    if state is PullRequestStatus.UNKNOWN and error is None:
        error = "HTTP 500 from Azure DevOps"
    return PullRequest(number, state, closed_at, error)


def states(*pulls: PullRequest) -> dict[int, PullRequest]:
    """The lookup answers the runner hands to the policy, by id."""
    return {p.id: p for p in pulls}


def rules(
    *,
    tag_pattern: str = DEFAULT_TAG_PATTERN,
    grace: timedelta = timedelta(0),
    grace_text: str | None = None,
    unknown_pr: str = "keep",
    delete_manifests: bool = True,
) -> PolicyRules:
    """Policy rules with the contract's defaults; `grace_text` defaults to whole days (`7d`)."""
    if grace_text is None:
        grace_text = f"{grace.days}d" if grace else "0"
    return PolicyRules(
        tag_pattern=parse_tag_pattern(tag_pattern),
        grace_period=grace,
        grace_period_text=grace_text,
        unknown_pr=UnknownPullRequest(unknown_pr),
        delete_manifests=delete_manifests,
    )


def plan_of(
    listings: list[RepositoryListing] | RepositoryListing,
    pull_requests: Mapping[int, PullRequest],
    *,
    now: datetime = NOW,
    policy: PolicyRules | None = None,
) -> Plan:
    """plan() with NOW and default rules."""
    items = [listings] if isinstance(listings, RepositoryListing) else listings
    return plan(items, pull_requests, now, policy or rules())


def environment(**overrides: str) -> dict[str, str]:
    """The smallest valid environment for load_settings, with `overrides` on top."""
    env = {
        "CLEANUP_REGISTRY": "contoso.azurecr.io",
        "AZURE_DEVOPS_ORG_URL": "https://dev.azure.com/contoso",
    }
    env.update(overrides)
    return env
