"""The benchmark's workloads: a seed (registry images, pull requests) plus emulator knobs.

Every workload is a grid of `repositories` x `tags_per_repository` single-platform images, one
tag per image:

- the first `pr_tags_per_repository` images of each repository are tagged `PR<id>`, the rest
  `v1.<i>.0`, the newest `latest` (exactly `tags_per_repository` tags per repository);
- every pull request is named by `tags_per_pr` tags in that many *different* repositories (one
  pull request builds several services, as in a monorepo), so the product's "each distinct pull
  request once" matters across repositories, not only within one;
- `closed_per_10` pull requests in every 10 are closed (alternately completed and abandoned, 2
  to 30 days ago); the others are active (every fifth of them a draft). With a grace period of 0
  every tag of a closed pull request is stale: its manifest, which carries no other tag, goes
  with it (one manifest deletion per stale tag).

The seed is a pure function of the workload, so the set a run must delete (`expected_deletions`)
is known without running anything, and digests are the same in every run (the registry
emulator's bulk seeding derives them from the salt).

- W1 team registry: 100 x 30 = 3,000 tags; 1,800 PR tags over 600 PRs, 70 % closed; 20 ms
  latency on every request.
- W2 large registry: 1,000 x 100 = 100,000 tags; 60,000 PR tags over 20,000 PRs, 70 % closed;
  0 ms latency.
- W3 throttled: 25 x 40 = 1,000 tags; 600 PR tags over 200 PRs, all closed; 20 ms latency; 100
  registry writes per 10 s, 429 with Retry-After past it.
- W4 flaky DevOps: W1, plus 5 % of DevOps requests answering 503 and 1 % 429 (Retry-After 1 s).

`--quick` runs the `quick` variants (same shapes, fewer repositories); the smoke test runs the
`tiny` ones (a handful of repositories, no latency).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property

from emulators.scenario import ImageSeed, PullRequestSeed, PullRequestStatusName, Scenario

PROJECT = "web"
FIRST_PR = 10_000


@dataclass(frozen=True, slots=True)
class Fault:
    """One DevOps fault rule: `probability` of the requests answer `status`."""

    status: int
    probability: float
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Workload:
    """A seed plus emulator knobs; everything a measurement needs to set up the emulators."""

    name: str
    title: str
    repositories: int
    tags_per_repository: int
    pr_tags_per_repository: int
    tags_per_pr: int = 3
    closed_per_10: int = 7
    latency_ms: float = 20.0
    write_budget: tuple[int, float] | None = None
    """(writes, window seconds) the registry allows; None: unlimited."""
    devops_faults: tuple[Fault, ...] = ()
    baseline: bool = False
    """Whether the sequential baseline is measured too (W2 and W3 would take too long)."""
    same_result_as: str | None = None
    """A workload whose fault-free result this one's must equal (W4: W1)."""

    # --- the seed, derived -------------------------------------------------------------

    @property
    def tags(self) -> int:
        return self.repositories * self.tags_per_repository

    @property
    def pr_tags(self) -> int:
        return self.repositories * self.pr_tags_per_repository

    @property
    def pull_request_count(self) -> int:
        return -(-self.pr_tags // self.tags_per_pr)

    def repository_name(self, r: int) -> str:
        return f"team-{r % 10:02d}/svc-{r:04d}"

    def pr_of(self, r: int, j: int) -> int:
        """The pull request of repository `r`'s `j`-th PR tag (consecutive repositories share)."""
        return FIRST_PR + (j * self.repositories + r) // self.tags_per_pr

    def is_closed(self, pr: int) -> bool:
        return ((pr - FIRST_PR) * 7) % 10 < self.closed_per_10

    @cached_property
    def now(self) -> datetime:
        return datetime.now(UTC).replace(microsecond=0)

    def iter_images(self) -> Iterator[ImageSeed]:
        """Every image, repository by repository (what `bulk_seed` pushes)."""
        now = self.now
        for r in range(self.repositories):
            repo = self.repository_name(r)
            for i in range(self.tags_per_repository):
                created = now - timedelta(days=self.tags_per_repository - i, seconds=r)
                if i < self.pr_tags_per_repository:
                    tags: tuple[str, ...] = (f"PR{self.pr_of(r, i)}",)
                elif i == self.tags_per_repository - 1:
                    tags = ("latest",)
                else:
                    tags = (f"v1.{i}.0",)
                yield ImageSeed(repo, tags, created_at=created, salt=f"{r}:{i}")

    def pull_requests(self) -> tuple[PullRequestSeed, ...]:
        now = self.now
        seeds = []
        for pr in range(FIRST_PR, FIRST_PR + self.pull_request_count):
            n = pr - FIRST_PR
            # Azure DevOps numbers pull requests as they are created: ids and creation times
            # grow together (the listing, newest first, is also highest id first).
            created = now - timedelta(days=40) + timedelta(seconds=n)
            if self.is_closed(pr):
                status: PullRequestStatusName = "completed" if n % 2 == 0 else "abandoned"
                closed = now - timedelta(days=2 + n % 29)
                seeds.append(
                    PullRequestSeed(
                        pr, status, closed_at=closed, created_at=created, project=PROJECT
                    )
                )
            else:
                seeds.append(
                    PullRequestSeed(
                        pr, "active", is_draft=n % 5 == 0, created_at=created, project=PROJECT
                    )
                )
        return tuple(seeds)

    def scenario(self) -> Scenario:
        """The DevOps part of the seed (images go in through `bulk_seed`, which is faster)."""
        return Scenario(pull_requests=self.pull_requests(), project=PROJECT)

    # --- what a correct run does -------------------------------------------------------

    def stale_tags(self) -> set[tuple[str, str]]:
        """(repository, tag) of every tag a correct run deletes."""
        return {
            (self.repository_name(r), f"PR{self.pr_of(r, j)}")
            for r in range(self.repositories)
            for j in range(self.pr_tags_per_repository)
            if self.is_closed(self.pr_of(r, j))
        }

    @property
    def distinct_pull_requests(self) -> int:
        return self.pull_request_count

    @property
    def active_pull_requests(self) -> int:
        return sum(
            1
            for pr in range(FIRST_PR, FIRST_PR + self.pull_request_count)
            if not self.is_closed(pr)
        )

    @property
    def deletions(self) -> int:
        """Registry deletions a minimal run needs: one manifest deletion per stale tag here."""
        return len(self.stale_tags())

    def scaled(self, repositories: int) -> Workload:
        return replace(self, repositories=repositories)


W1 = Workload(
    "W1",
    "team registry",
    repositories=100,
    tags_per_repository=30,
    pr_tags_per_repository=18,
    latency_ms=20.0,
    baseline=True,
)
W2 = Workload(
    "W2",
    "large registry",
    repositories=1000,
    tags_per_repository=100,
    pr_tags_per_repository=60,
    latency_ms=0.0,
)
W3 = Workload(
    "W3",
    "throttled registry",
    repositories=25,
    tags_per_repository=40,
    pr_tags_per_repository=24,
    closed_per_10=10,
    latency_ms=20.0,
    write_budget=(100, 10.0),
)
W4 = replace(
    W1,
    name="W4",
    title="flaky Azure DevOps",
    baseline=False,
    # Fault rules are tried in order: the 429 rule sees only what the 503 rule let through,
    # so its probability is raised to make it 1 % of all DevOps requests.
    devops_faults=(Fault(503, 0.05), Fault(429, 0.01 / 0.95, retry_after_s=1.0)),
    same_result_as="W1",
)

FULL: dict[str, Workload] = {w.name: w for w in (W1, W2, W3, W4)}
QUICK: dict[str, Workload] = {
    "W1": W1.scaled(25),
    "W2": W2.scaled(200),
    "W3": replace(W3, repositories=10, write_budget=(60, 4.0)),
    "W4": W4.scaled(25),
}
TINY: dict[str, Workload] = {
    "W1": replace(W1, repositories=4, tags_per_repository=6, pr_tags_per_repository=3),
    "W2": replace(W2, repositories=10, tags_per_repository=20, pr_tags_per_repository=12),
    "W3": replace(
        W3,
        repositories=3,
        tags_per_repository=6,
        pr_tags_per_repository=4,
        latency_ms=0.0,
        write_budget=(6, 1.0),
    ),
    "W4": replace(
        W4,
        repositories=4,
        tags_per_repository=6,
        pr_tags_per_repository=3,
        latency_ms=0.0,
    ),
}
TINY["W1"] = replace(TINY["W1"], latency_ms=0.0)
SIZES: dict[str, dict[str, Workload]] = {"full": FULL, "quick": QUICK, "tiny": TINY}
