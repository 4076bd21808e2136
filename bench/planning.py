"""Planning CPU alone: `cleanup.policy.plan` over a workload's listings, timed in this process.

    python -m bench.planning W2 [--size full|quick|tiny] [--repeat 3]

Builds the `RepositoryListing`s the registry adapter would return for the workload's seed (one
`Tag` and one `Manifest` per image, as listed) and the pull-request states Azure DevOps would
answer, then calls `plan` `repeat` times, measuring each call with `time.process_time` (CPU of
this process; nothing else runs in it). Prints JSON: every call's CPU seconds, the median, the
plan's size, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from datetime import UTC, datetime

from bench.workloads import SIZES, Workload
from cleanup.model import Manifest, PullRequest, PullRequestStatus, RepositoryListing, Tag
from cleanup.policy import plan
from cleanup.settings import load_settings

_STATUS = {
    "active": PullRequestStatus.ACTIVE,
    "completed": PullRequestStatus.COMPLETED,
    "abandoned": PullRequestStatus.ABANDONED,
}


def listings_of(workload: Workload) -> list[RepositoryListing]:
    by_repository: dict[str, tuple[list[Tag], list[Manifest]]] = {}
    for index, image in enumerate(workload.iter_images()):
        digest = f"sha256:{index:064x}"
        tags, manifests = by_repository.setdefault(image.repository, ([], []))
        tags.extend(
            Tag(image.repository, name, digest, last_updated=image.created_at)
            for name in image.tags
        )
        manifests.append(Manifest(image.repository, digest, tags=image.tags))
    return [
        RepositoryListing(name, tuple(tags), tuple(manifests))
        for name, (tags, manifests) in by_repository.items()
    ]


def states_of(workload: Workload) -> dict[int, PullRequest]:
    return {
        seed.id: PullRequest(seed.id, _STATUS[seed.status], closed_at=seed.closed_at)
        for seed in workload.pull_requests()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.planning")
    parser.add_argument("workload", default="W2", nargs="?")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    workload = SIZES[args.size][args.workload]
    settings = load_settings(
        {
            "CLEANUP_REGISTRY": "bench.azurecr.io",
            "AZURE_DEVOPS_ORG_URL": "https://dev.azure.com/bench",
            "CLEANUP_MAX_DELETIONS": str(workload.tags),
        }
    )
    built = time.process_time()
    listings = listings_of(workload)
    states = states_of(workload)
    built = time.process_time() - built
    now = datetime.now(UTC)
    seconds = []
    result = None
    for _ in range(max(1, args.repeat)):
        start = time.process_time()
        result = plan(listings, states, now, settings)
        seconds.append(time.process_time() - start)
    assert result is not None  # noqa: S101 - repeat is at least 1
    output = {
        "workload": workload.name,
        "tags": sum(len(listing.tags) for listing in listings),
        "build_cpu_s": round(built, 3),
        "plan_cpu_s": [round(s, 4) for s in seconds],
        "plan_cpu_median_s": round(statistics.median(seconds), 4),
        "tags_deleted": result.tags_deleted,
        "steps": sum(1 for _ in result.steps),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    sys.stdout.write(json.dumps(output) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
