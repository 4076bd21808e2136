"""Registries the reliability suite runs against, and the fault-free result to compare with."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from cleanup.engine import run
from emulators import Emulators
from emulators.scenario import ImageSeed, PullRequestSeed, Scenario
from tests.reliability.conftest import FAST, Emulate, Snapshot, settings_for, snapshot

NOW = datetime.now(UTC)


def closed(pr_id: int, status: str = "completed", days: float = 3) -> PullRequestSeed:
    return PullRequestSeed(pr_id, status, closed_at=NOW - timedelta(days=days))  # type: ignore[arg-type]


def small_registry() -> Scenario:
    """Three repositories: plain, multi-arch with a signature, shared manifests, a lock,
    active, closed and unknown pull requests."""
    images = (
        ImageSeed("team/api", ("v1.0", "latest")),
        ImageSeed("team/api", ("PR1",)),
        ImageSeed("team/api", ("PR2",)),
        ImageSeed("team/api", ("PR3",), platforms=("linux/amd64", "linux/arm64")),
        ImageSeed("team/api", subject="PR3"),
        ImageSeed("team/api", ("PR4", "staging")),
        ImageSeed("team/web", ("PR5",)),
        ImageSeed("team/web", ("pr-6",)),
        ImageSeed("team/web", ("PR7",)),
        ImageSeed("team/web", ("PR10", "PR11")),
        ImageSeed("tools", ("PR8",), locked_tags=("PR8",)),
        ImageSeed("tools", ("PR9",), locked=True),
        ImageSeed("tools", ("1.0",)),
    )
    pulls = (
        closed(1),
        PullRequestSeed(2, "active"),
        closed(3, "abandoned"),
        closed(4),
        closed(5),
        closed(6, "abandoned"),
        closed(8),
        closed(9),
        closed(10),
        PullRequestSeed(11, "active", is_draft=True),
    )
    return Scenario(images=images, pull_requests=pulls)


async def fault_free(emulate: Emulate, scenario: Scenario, **overrides: str | None) -> Snapshot:
    """The registry after one run without faults, on a fresh copy of `scenario`."""
    emulators = emulate(scenario)
    report = await run(settings_for(emulators, **overrides), tuning=FAST)
    assert report.exit_code == 0, report.render_text()
    return snapshot(emulators)


def random_registry(rng: random.Random, repositories: int = 4) -> Scenario:
    """A seeded registry of a few repositories; about half the pull requests are closed."""
    statuses = ["active", "completed", "abandoned", "unknown"]
    pulls: dict[int, PullRequestSeed] = {}
    images: list[ImageSeed] = []
    next_pr = 1
    for r in range(repositories):
        repository = f"team-{r}/svc" if r % 2 else f"svc-{r}"
        images.append(ImageSeed(repository, ("latest", f"v{r}.0"), salt=f"release-{r}"))
        for i in range(rng.randint(4, 7)):
            number = next_pr if rng.random() < 0.8 or next_pr == 1 else rng.randint(1, next_pr - 1)
            next_pr += 1
            status = rng.choice(statuses)
            if number not in pulls and status != "unknown":
                pulls[number] = (
                    PullRequestSeed(number, "active", is_draft=rng.random() < 0.3)
                    if status == "active"
                    else closed(number, status, days=rng.uniform(1, 20))
                )
            tags = [f"PR{number}"] if rng.random() < 0.5 else [f"pr-{number}"]
            if rng.random() < 0.15:
                tags.append(f"keep-{r}-{i}")
            kind = rng.random()
            images.append(
                ImageSeed(
                    repository,
                    tuple(tags),
                    platforms=("linux/amd64", "linux/arm64") if kind < 0.2 else (),
                    locked=0.2 <= kind < 0.27,
                    locked_tags=(tags[0],) if 0.27 <= kind < 0.34 else (),
                    salt=f"{repository}-{i}",
                )
            )
            if rng.random() < 0.2:
                images.append(ImageSeed(repository, subject=tags[0], salt=f"sig-{repository}-{i}"))
    return Scenario(images=tuple(images), pull_requests=tuple(pulls.values()))


def protected(scenario: Scenario, before: Snapshot, emulators: Emulators) -> set[tuple[str, str]]:
    """Tags of active or unknown pull requests (and every non-PR tag) in `before`."""
    del emulators
    active = {p.id for p in scenario.pull_requests if p.status == "active"}
    known = {p.id for p in scenario.pull_requests}
    keep = set()
    for repository, tag in before.tags:
        number = _pr_number(tag)
        if number is None or number in active or number not in known:
            keep.add((repository, tag))
    return keep


def _pr_number(tag: str) -> int | None:
    lowered = tag.lower()
    for prefix in ("pr-", "pr"):
        if lowered.startswith(prefix) and lowered[len(prefix) :].isdigit():
            return int(lowered[len(prefix) :])
    return None
