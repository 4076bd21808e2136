"""What the emulators hold at start: registry images and Azure DevOps pull requests.

A `Scenario` is plain frozen data, built in Python (tests, the benchmark) or read from a JSON
scenario file (`python -m emulators --seed FILE`). The registry emulator turns `ImageSeed`s into
real manifests (bodies, sha256 digests); the Azure DevOps emulator serves `PullRequestSeed`s.

Scenario file format (JSON; every key but `repository`/`id` optional)::

    {
      "project": "web",
      "images": [
        {"repository": "team/api", "tags": ["v1.4.2", "latest"], "age_days": 30},
        {"repository": "team/api", "tags": ["PR1234"], "platforms": ["linux/amd64", "linux/arm64"]},
        {"repository": "team/api", "subject": "PR1234",
         "artifact_type": "application/vnd.cncf.notary.signature"},
        {"repository": "team/api", "tags": ["pr-1240"], "locked": true, "locked_tags": ["pr-1240"]}
      ],
      "pull_requests": [
        {"id": 1234, "status": "completed", "closed_at": "2026-11-01T10:00:00Z",
         "project": "web", "repository": "api"},
        {"id": 1240, "status": "active", "is_draft": true, "project": "web", "repository": "api"}
      ]
    }
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

PullRequestStatusName = Literal["active", "completed", "abandoned", "notSet"]
PULL_REQUEST_STATUSES: tuple[str, ...] = ("active", "completed", "abandoned", "notSet")

DEFAULT_PROJECT = "web"


@dataclass(frozen=True, slots=True)
class PullRequestSeed:
    """One Azure DevOps pull request the DevOps emulator serves."""

    id: int
    status: PullRequestStatusName = "active"
    is_draft: bool = False
    closed_at: datetime | None = None
    """When it was completed or abandoned (aware); None while active."""
    project: str = DEFAULT_PROJECT
    """Project name the pull request belongs to."""
    repository: str = "app"
    """Name of the Git repository (in `project`) the pull request targets."""
    title: str = ""
    created_at: datetime | None = None
    source_ref: str | None = None
    """`refs/heads/...`; None: `refs/heads/feature/pr-{id}`."""
    target_ref: str = "refs/heads/main"


@dataclass(frozen=True, slots=True)
class ImageSeed:
    """One manifest in one repository, with its tags.

    With `platforms` (`"linux/amd64"`, `"linux/arm/v7"`) it is a multi-arch index whose children
    (one untagged image manifest per platform) are created with it. With `subject` (a tag or a
    digest in the same repository) it is a referrer (signature, SBOM) attached to that manifest.
    """

    repository: str
    tags: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    subject: str | None = None
    artifact_type: str | None = None
    created_at: datetime | None = None
    """When it was pushed; None: `age_days` before the scenario's load time."""
    age_days: float = 1.0
    locked: bool = False
    """The manifest's `deleteEnabled` is false."""
    locked_tags: tuple[str, ...] = ()
    """Tags (of `tags`) whose `deleteEnabled` is false."""
    salt: str = ""
    """Makes otherwise identical images get distinct digests."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything the three emulators start with."""

    images: tuple[ImageSeed, ...] = ()
    pull_requests: tuple[PullRequestSeed, ...] = ()
    project: str = DEFAULT_PROJECT
    """The project AZURE_DEVOPS_PROJECT names in the printed environment."""
    extra_projects: tuple[str, ...] = ()
    """Projects that exist in the organization without any pull request."""

    @property
    def projects(self) -> tuple[str, ...]:
        """Every project name the organization has, the default project first."""
        names = [self.project, *self.extra_projects, *(p.project for p in self.pull_requests)]
        return tuple(dict.fromkeys(names))

    @property
    def repositories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i.repository for i in self.images))


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _days_ago(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.now(UTC) - timedelta(days=float(value))


def pull_request_from_dict(data: dict[str, Any]) -> PullRequestSeed:
    status = str(data.get("status", "active"))
    if status not in PULL_REQUEST_STATUSES:
        raise ValueError(
            f"pull request {data.get('id')}: status {status!r} is not one of "
            f"{', '.join(PULL_REQUEST_STATUSES)}"
        )
    closed_at = _parse_time(data.get("closed_at")) or _days_ago(data.get("closed_days_ago"))
    return PullRequestSeed(
        id=int(data["id"]),
        status=status,  # type: ignore[arg-type]  # checked just above
        is_draft=bool(data.get("is_draft", False)),
        closed_at=closed_at,
        project=str(data.get("project", DEFAULT_PROJECT)),
        repository=str(data.get("repository", "app")),
        title=str(data.get("title", "")),
        created_at=_parse_time(data.get("created_at")),
        source_ref=data.get("source_ref"),
        target_ref=str(data.get("target_ref", "refs/heads/main")),
    )


def image_from_dict(data: dict[str, Any]) -> ImageSeed:
    return ImageSeed(
        repository=str(data["repository"]),
        tags=tuple(str(t) for t in data.get("tags", ())),
        platforms=tuple(str(p) for p in data.get("platforms", ())),
        subject=data.get("subject"),
        artifact_type=data.get("artifact_type"),
        created_at=_parse_time(data.get("created_at")),
        age_days=float(data.get("age_days", 1.0)),
        locked=bool(data.get("locked", False)),
        locked_tags=tuple(str(t) for t in data.get("locked_tags", ())),
        salt=str(data.get("salt", "")),
    )


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    return Scenario(
        images=tuple(image_from_dict(i) for i in data.get("images", ())),
        pull_requests=tuple(pull_request_from_dict(p) for p in data.get("pull_requests", ())),
        project=str(data.get("project", DEFAULT_PROJECT)),
        extra_projects=tuple(str(p) for p in data.get("extra_projects", ())),
    )


def load_scenario(path: str | Path) -> Scenario:
    """Read a JSON scenario file (format in this module's docstring)."""
    return scenario_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass(slots=True)
class ScenarioBuilder:
    """Small fluent helper for tests: `ScenarioBuilder().image("a", "PR1").pr(1, "completed")`."""

    images: list[ImageSeed] = field(default_factory=list)
    pull_requests: list[PullRequestSeed] = field(default_factory=list)
    project: str = DEFAULT_PROJECT

    def image(self, repository: str, *tags: str, **kwargs: Any) -> ScenarioBuilder:
        self.images.append(ImageSeed(repository, tags=tags, **kwargs))
        return self

    def pr(
        self, pr_id: int, status: PullRequestStatusName = "active", **kwargs: Any
    ) -> ScenarioBuilder:
        kwargs.setdefault("project", self.project)
        if status in ("completed", "abandoned"):
            kwargs.setdefault("closed_at", datetime.now(UTC) - timedelta(days=2))
        self.pull_requests.append(PullRequestSeed(pr_id, status, **kwargs))
        return self

    def build(self) -> Scenario:
        return Scenario(tuple(self.images), tuple(self.pull_requests), project=self.project)


def demo_scenario(now: datetime | None = None) -> Scenario:
    """A registry and pull requests that look like a real team's (`--seed demo`).

    Pull requests of project `web`: 1234 completed ten days ago, 1240 active, 1241 an active
    draft, 1250 abandoned three days ago, 1260 completed an hour ago; 1300 is completed but in
    project `mobile`; 1299 exists nowhere. `team/api` has a multi-arch PR image with a signature
    attached; `tools/builder` has a locked PR tag.
    """
    now = now or datetime.now(UTC)

    def ago(**delta: float) -> datetime:
        return now - timedelta(**delta)

    def img(repo: str, *tags: str, days: float, **kwargs: Any) -> ImageSeed:
        return ImageSeed(repo, tags=tags, created_at=ago(days=days), **kwargs)

    images = (
        img("team/api", "v1.4.1", days=40),
        img("team/api", "v1.4.2", "latest", days=12),
        img("team/api", "main-3f9c2e1", days=11),
        img("team/api", "PR1234", days=14, platforms=("linux/amd64", "linux/arm64")),
        ImageSeed(
            "team/api",
            subject="PR1234",
            artifact_type="application/vnd.cncf.notary.signature",
            created_at=ago(days=14),
        ),
        img("team/api", "pr-1240", days=2),
        img("team/api", "PR1250", days=5),
        img("team/api", "PR1299", days=30),
        img("team/web", "v2.0.0", "latest", days=20),
        img("team/web", "main-ab12cd3", days=1),
        img("team/web", "PR1241", days=1),
        img("team/web", "pr-1260", days=3),
        img("team/web", "PR1234", days=13),
        img("tools/builder", "1.0", "latest", days=90),
        img("tools/builder", "PR1250", days=6, locked_tags=("PR1250",)),
        img("payments", "v3.1.0", "latest", days=8),
        img("payments", "PR1300", days=4),
        img("payments", "pr-1234", "staging", days=12),
        img("docs", "latest", days=60),
    )
    pull_requests = (
        PullRequestSeed(
            1234,
            "completed",
            closed_at=ago(days=10),
            repository="api",
            title="Add rate limiting to the orders endpoint",
        ),
        PullRequestSeed(1240, "active", repository="api", title="Paginate the catalog"),
        PullRequestSeed(1241, "active", is_draft=True, repository="web", title="Dark mode (WIP)"),
        PullRequestSeed(
            1250,
            "abandoned",
            closed_at=ago(days=3),
            repository="builder",
            title="Try a distroless base image",
        ),
        PullRequestSeed(
            1260,
            "completed",
            closed_at=ago(hours=1),
            repository="web",
            title="Fix the login redirect",
        ),
        PullRequestSeed(
            1300,
            "completed",
            closed_at=ago(days=2),
            project="mobile",
            repository="payments-app",
            title="Apple Pay",
        ),
    )
    return Scenario(images=images, pull_requests=pull_requests, project="web")
