"""In-memory stand-ins for the Registry and PullRequests protocols, for runner unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from cleanup.errors import AuthenticationError, LockedError, RegistryOperationError
from cleanup.model import Manifest, PullRequest, PullRequestStatus, RepositoryListing


@dataclass
class FakeRegistry:
    """Repositories as listings; deletions change them the way a registry would."""

    listings: dict[str, RepositoryListing]
    failing: set[str] = field(default_factory=set)
    """Targets (`repo:tag` or `repo@digest`) whose deletion fails."""
    calls: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, *listings: RepositoryListing) -> FakeRegistry:
        return cls({listing.name: listing for listing in listings})

    async def list_repository_names(self) -> AsyncIterator[str]:
        self.calls.append("catalog")
        for name in sorted(self.listings):
            yield name

    async def list_repository(self, name: str) -> RepositoryListing:
        self.calls.append(f"list {name}")
        return self.listings[name]

    async def list_manifests(self, repository: str) -> tuple[Manifest, ...]:
        self.calls.append(f"manifests {repository}")
        return self.listings[repository].manifests

    async def delete_tag(self, repository: str, tag: str) -> None:
        target = f"{repository}:{tag}"
        self._check(target, locked=self._tag_locked(repository, tag))
        listing = self.listings[repository]
        manifests = tuple(_without_tag(m, tag) for m in listing.manifests)
        self._replace(listing, manifests)

    async def delete_manifest(self, repository: str, digest: str) -> None:
        target = f"{repository}@{digest}"
        listing = self.listings[repository]
        locked = any(m.digest == digest and not m.delete_enabled for m in listing.manifests)
        self._check(target, locked=locked)
        self._replace(listing, tuple(m for m in listing.manifests if m.digest != digest))

    def tags(self, repository: str) -> set[str]:
        return {t for m in self.listings[repository].manifests for t in m.tags}

    def digests(self, repository: str) -> set[str]:
        return {m.digest for m in self.listings[repository].manifests}

    def _check(self, target: str, *, locked: bool) -> None:
        self.calls.append(f"delete {target}")
        if locked:
            raise LockedError(f"{target} is locked")
        if target in self.failing:
            raise RegistryOperationError(f"deleting {target} failed: 500")

    def _tag_locked(self, repository: str, tag: str) -> bool:
        return any(t.name == tag and not t.delete_enabled for t in self.listings[repository].tags)

    def _replace(self, listing: RepositoryListing, manifests: tuple[Manifest, ...]) -> None:
        names = {t for m in manifests for t in m.tags}
        tags = tuple(t for t in listing.tags if t.name in names)
        self.listings[listing.name] = RepositoryListing(listing.name, tags, manifests)


def _without_tag(manifest: Manifest, tag: str) -> Manifest:
    tags = tuple(t for t in manifest.tags if t != tag)
    return Manifest(
        manifest.repository,
        manifest.digest,
        tags,
        manifest.references,
        manifest.subject,
        manifest.delete_enabled,
        manifest.media_type,
    )


@dataclass
class FakePullRequests:
    """Answers from a table; counts lookups; can refuse the credential."""

    states: dict[int, PullRequest]
    refuse: bool = False
    failing: set[int] = field(default_factory=set)
    looked_up: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, pulls: Iterable[PullRequest]) -> FakePullRequests:
        return cls({p.id: p for p in pulls})

    async def check_access(self) -> None:
        if self.refuse:
            raise AuthenticationError("Azure DevOps", "401 Unauthorized")

    async def look_up(self, pr_id: int) -> PullRequest:
        self.looked_up.append(pr_id)
        if pr_id in self.failing:
            return PullRequest(pr_id, PullRequestStatus.UNKNOWN, error="lookup failed: 503")
        return self.states.get(pr_id, PullRequest(pr_id, PullRequestStatus.NOT_FOUND))
