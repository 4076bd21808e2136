"""The lower bound of a workload: what an ideal client, costing no CPU at all, would need.

It is computed from the workload alone (never from a run), in requests and in seconds.

Requests: the fewest the work needs.

- Registry listing pages: `catalog = ceil(repositories / P)` pages of the catalog, and per
  repository `ceil(tags / P)` tag pages plus `ceil(manifests / P)` manifest pages (the tag
  listing carries the tags' locks, the manifest listing the manifests' locks and an index's
  children; both are needed). `P = 100`, the registry's default page size (what the product
  asks for; real ACR's largest page is unverified). `get_manifest` reads: 0 (the workloads hold
  no referrer or index whose structure the listing leaves out).
- Azure DevOps: per distinct pull request one lookup, or bulk listings of the project's pull
  requests (`$top=1000` a page): of every status (`ceil(project's pull requests / 1000)` pages,
  what the product does), or of the active ones plus one lookup per pull request that is not
  active. `R_devops = min(distinct, ceil(all / 1000), ceil(active / 1000) + not active)`; every
  workload's pull requests are all in the one project, so `all = distinct`.
- Deletions: one per manifest that goes (deleting a manifest removes its tags), one per stale tag
  whose manifest stays; in these workloads every stale tag has its own manifest: one each.
- Tokens: one managed-identity token, one `/oauth2/exchange`, one `/oauth2/token` (a wildcard
  scope, as `acr purge` uses) - counted in the chain below, not spread.

Time: the requests spread over the concurrency limit `C` (per service, as
`CLEANUP_CONCURRENCY` means), each costing the emulated latency `L`, plus the chain of
dependent round trips that no concurrency can overlap::

    chain   = 1 (managed identity) + 2 (exchange, token) + catalog pages
              + (most listing pages of one repository - 1)      # pages follow `Link` headers
    scan    = max(ceil(listing pages / C), ceil(R_devops / C))  # both services at once
    delete  = ceil(deletions / C)                               # after the whole plan (the
                                                                #   safety cap needs all of it)
    T_lb    = L * (chain + scan + delete)

Deletions wait for the whole plan because the contract's safety cap counts every deletion before
the first one is sent; the listing pages of the chain are counted in `scan` again (a few
requests, an overestimate of at most `chain` rounds on a bound of dozens). With `L = 0` (W2) the
bound is 0 and its ratio is not reported. W3's bound is the write budget itself:
`deletions / (writes per window) * window` seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.workloads import Workload

PAGE_SIZE = 100
DEVOPS_PAGE_SIZE = 1000


def _pages(items: int, size: int) -> int:
    return max(1, -(-items // size))


@dataclass(frozen=True, slots=True)
class LowerBound:
    """The fewest requests a workload needs, and the time an ideal client would take."""

    catalog_pages: int
    listing_pages: int
    """Tag and manifest pages of every repository (the catalog excluded)."""
    manifest_reads: int
    devops_requests: int
    deletions: int
    token_requests: int
    chain: int
    scan_rounds: int
    delete_rounds: int
    latency_s: float
    concurrency: int
    seconds: float
    throttle_seconds: float | None
    """W3: deletions / write budget, in seconds; None without a write budget."""

    @property
    def registry_operations(self) -> int:
        return self.catalog_pages + self.listing_pages + self.manifest_reads + self.deletions

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["registry_operations"] = self.registry_operations
        return data


def lower_bound(workload: Workload, concurrency: int) -> LowerBound:
    """The bound of `workload` at `concurrency` requests in flight per service."""
    c = max(1, concurrency)
    catalog = _pages(workload.repositories, PAGE_SIZE)
    tag_pages = _pages(workload.tags_per_repository, PAGE_SIZE)
    manifest_pages = _pages(workload.tags_per_repository, PAGE_SIZE)  # one manifest per tag
    listing = workload.repositories * (tag_pages + manifest_pages)
    active = workload.active_pull_requests
    distinct = workload.distinct_pull_requests
    devops = min(
        distinct,
        -(-distinct // DEVOPS_PAGE_SIZE),
        -(-active // DEVOPS_PAGE_SIZE) + (distinct - active),
    )
    deletions = workload.deletions
    chain = 1 + 2 + catalog + (max(tag_pages, manifest_pages) - 1)
    scan = max(-(-listing // c), -(-devops // c))
    delete = -(-deletions // c)
    latency = workload.latency_ms / 1000
    throttle = None
    if workload.write_budget is not None:
        writes, window = workload.write_budget
        throttle = deletions / writes * window
    return LowerBound(
        catalog_pages=catalog,
        listing_pages=listing,
        manifest_reads=0,
        devops_requests=devops,
        deletions=deletions,
        token_requests=3,
        chain=chain,
        scan_rounds=scan,
        delete_rounds=delete,
        latency_s=latency,
        concurrency=c,
        seconds=latency * (chain + scan + delete),
        throttle_seconds=throttle,
    )
