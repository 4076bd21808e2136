"""The product's vocabulary: what the registry and Azure DevOps tell us, in plain frozen data.

Adapters translate wire formats into these types; policy and runner speak only these.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class PullRequestStatus(enum.Enum):
    """What Azure DevOps says of a pull request, plus the two answers it could not give."""

    ACTIVE = "active"
    COMPLETED = "completed"
    ABANDONED = "abandoned"
    NOT_FOUND = "notFound"
    """Azure DevOps answered that no such pull request exists (in the configured project)."""
    UNKNOWN = "unknown"
    """The lookup failed (after retries) or answered something unexpected: keep the tag."""

    @property
    def is_closed(self) -> bool:
        return self in (PullRequestStatus.COMPLETED, PullRequestStatus.ABANDONED)


@dataclass(frozen=True, slots=True)
class PullRequest:
    """One pull request's state as looked up once per run."""

    id: int
    status: PullRequestStatus
    closed_at: datetime | None = None
    """When it was completed or abandoned (aware, UTC); None while active or when unknown."""
    error: str | None = None
    """Why the status is UNKNOWN; never carries a secret."""
    where: str | None = None
    """Of a NOT_FOUND one: where it was looked for (`in project web`), for the report."""


@dataclass(frozen=True, slots=True)
class Tag:
    """A tag as listed by the registry."""

    repository: str
    name: str
    digest: str
    delete_enabled: bool = True
    last_updated: datetime | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest as listed by the registry, with what the listing alone cannot tell filled in."""

    repository: str
    digest: str
    tags: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    """Digests of the platform manifests of an index; empty for a single-platform image."""
    subject: str | None = None
    """Digest this manifest is attached to (a signature, an SBOM); None for ordinary images."""
    delete_enabled: bool = True
    media_type: str | None = None


@dataclass(frozen=True, slots=True)
class RepositoryListing:
    """Everything one repository holds, or the reason it could not all be read."""

    name: str
    tags: tuple[Tag, ...]
    manifests: tuple[Manifest, ...]
    complete: bool = True
    """False when paging broke off or a read failed: nothing in this repository may be deleted."""
    error: str | None = None


class Registry(Protocol):
    """The registry operations the runner needs. Adapters raise the errors in cleanup.errors."""

    def list_repository_names(self) -> AsyncIterator[str]:
        """Every repository name in the registry, in the registry's order."""
        ...

    async def list_repository(self, name: str) -> RepositoryListing:
        """Tags and manifests of one repository, with referrers' subjects and index children."""
        ...

    async def list_manifests(self, repository: str) -> tuple[Manifest, ...]:
        """The repository's manifests as they are now (tags, index children, locks).

        Read just before deleting manifests, to catch what changed since the plan: filled in
        like list_repository's (referrers' subjects, index children). Raises like
        list_repository, or RegistryOperationError.
        """
        ...

    async def delete_tag(self, repository: str, tag: str) -> None:
        """Delete one tag; a tag already gone counts as deleted."""
        ...

    async def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete one manifest (and any tag still on it); one already gone counts as deleted."""
        ...


class PullRequests(Protocol):
    """Azure DevOps, as far as the runner needs it. The runner asks for each distinct id once."""

    async def check_access(self) -> None:
        """Prove the credential (and the project, when one is set) before any deletion.

        Raises AuthenticationError, ProjectNotFoundError or ServiceUnreachableError. With a
        project it may list the active pull requests in bulk and answer look_up from that.
        """
        ...

    async def look_up(self, pr_id: int) -> PullRequest:
        """One pull request's state; UNKNOWN (with error) when the lookup failed after retries.

        Raises AuthenticationError when the credential is refused: that stops the run.
        """
        ...
