"""One measurement: fresh emulators seeded with a workload, one child process, its figures.

The emulators run in the harness process (their threads), the measured program in a child
process of its own, so the child's CPU and memory are its own: `os.wait4` returns the rusage
of exactly that child (user + sys CPU, `ru_maxrss` = peak RSS of the whole process). Children
are started by a small spawner process (`bench/spawner.py`), not by the harness: a child's
`ru_maxrss` also counts the process it was forked from, which here holds the seeded registry.
The
emulators' own CPU (the harness process's delta while the child runs) is reported beside it, to
show when the emulators rather than the product set the pace.

Definitions used in the figures:

- *ACR requests*: every request the registry emulator answered: token endpoints, 401
  challenges and retried (429/5xx) attempts included.
- *ACR operations*: the units of work, each counted once, on its final answer: listing pages
  (`acr.catalog`, `acr.tags.list`, `acr.manifests.list`), manifest reads (`acr.manifest.get`)
  and deletions (`acr.tag.delete`, `acr.manifest.delete`). A request to one of those routes
  answered 401 (a challenge) or 408/429/5xx (retried), or dropped, is a request, not an
  operation. Token-endpoint requests are requests, never operations.
- *ACR requests per operation* = ACR requests / ACR operations (1.0: no overhead at all).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.workloads import Workload
from emulators import Emulators
from emulators.acr import AcrKnobs, Budget, bulk_seed
from emulators.harness import FaultRule, Knobs, LogEntry

ROOT = Path(__file__).resolve().parent.parent
LISTING_ROUTES = frozenset({"acr.catalog", "acr.tags.list", "acr.manifests.list"})
READ_ROUTES = frozenset({"acr.manifest.get"})
DELETE_ROUTES = frozenset({"acr.tag.delete", "acr.manifest.delete"})
OPERATION_ROUTES = LISTING_ROUTES | READ_ROUTES | DELETE_ROUTES
NOT_FINAL = frozenset({0, 401, 408, 429, 500, 502, 503, 504})
CHILD_TIMEOUT_S = 900.0


@dataclass(slots=True)
class Child:
    """What one child process cost."""

    argv: list[str]
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_mb: float
    stdout: str
    stderr: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


class Spawner:
    """The small process (`bench/spawner.py`) that starts every measured child.

    A child's `ru_maxrss` includes the memory of the process it was forked from, until it
    execs; this process holds the seeded emulators, so children are started from the spawner.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def _started(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "spawner.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        return self._proc

    def run(self, argv: list[str], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
        with self._lock:
            proc = self._started()
            if proc.stdin is None or proc.stdout is None:
                raise RuntimeError("the spawner has no pipes")
            request = {"argv": argv, "env": env, "cwd": str(ROOT), "timeout": timeout_s}
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
        if not answer:
            raise RuntimeError("the spawner exited without answering")
        result: dict[str, Any] = json.loads(answer)
        return result

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._proc.wait(timeout=30)
            self._proc = None


SPAWNER = Spawner()


def run_child(argv: list[str], env: dict[str, str], timeout_s: float = CHILD_TIMEOUT_S) -> Child:
    """Run `argv` to completion (through the spawner); wall time and this child's rusage."""
    result = SPAWNER.run(argv, env, timeout_s)
    return Child(
        argv=argv,
        returncode=int(result["returncode"]),
        wall_s=float(result["wall_s"]),
        user_s=float(result["user_s"]),
        sys_s=float(result["sys_s"]),
        max_rss_mb=float(result["max_rss_kb"]) / 1024,  # KiB on Linux
        stdout=str(result["stdout"]),
        stderr=str(result["stderr"]),
    )


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def emulators_for(workload: Workload) -> Iterator[Emulators]:
    """Fresh emulators seeded with `workload` (images through the fast bulk path)."""
    latency = workload.latency_ms
    devops_knobs = Knobs(latency_ms=latency)
    for fault in workload.devops_faults:
        devops_knobs.faults.add(
            FaultRule(
                route="devops.*",
                status=fault.status,
                probability=fault.probability,
                retry_after=fault.retry_after_s,
            )
        )
    emu = Emulators(
        workload.scenario(),
        acr_knobs=AcrKnobs(latency_ms=latency),
        devops_knobs=devops_knobs,
        identity_knobs=Knobs(latency_ms=latency),
    )
    with emu:
        bulk_seed(emu.acr.state, workload.iter_images())
        yield emu


def child_env(emu: Emulators, concurrency: int, max_deletions: int) -> dict[str, str]:
    """The harness's environment minus its own CLEANUP_* settings, plus the emulators'."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEANUP_", "AZURE_"))}
    env.update(emu.env)
    env["CLEANUP_CONCURRENCY"] = str(concurrency)
    env["CLEANUP_MAX_DELETIONS"] = str(max_deletions)
    env["PYTHONPATH"] = str(ROOT)
    return env


def registry_contents(emu: Emulators) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(repository, tag) and (repository, digest) pairs the registry holds now."""
    state = emu.acr.state
    tags: set[tuple[str, str]] = set()
    manifests: set[tuple[str, str]] = set()
    for repository in state.repository_names():
        tags.update((repository, t) for t in state.tag_names(repository))
        manifests.update((repository, d) for d in state.digests(repository))
    return tags, manifests


@dataclass(slots=True)
class Measurement:
    """One program's run against one workload."""

    workload: str
    program: str
    child: Child
    emulator_cpu_s: float
    entries: list[LogEntry]
    report: dict[str, Any]
    deleted_tags: set[tuple[str, str]] = field(default_factory=set)
    deleted_manifests: set[tuple[str, str]] = field(default_factory=set)
    started_at: float = 0.0
    load_before: float = 0.0
    """The machine's 1-minute load average as the child started (others share the machine)."""

    # --- counts from the request log -----------------------------------------------------

    def requests(self, service: str) -> int:
        return sum(1 for e in self.entries if e.service == service)

    def by_route(self) -> dict[str, dict[str, int]]:
        counts: dict[str, Counter[str]] = {}
        for e in self.entries:
            counts.setdefault(e.service, Counter())[e.route] += 1
        return {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}

    def by_status(self) -> dict[str, dict[str, int]]:
        counts: dict[str, Counter[str]] = {}
        for e in self.entries:
            counts.setdefault(e.service, Counter())[str(e.status)] += 1
        return {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}

    @property
    def acr_operations(self) -> int:
        return sum(
            1
            for e in self.entries
            if e.service == "acr" and e.route in OPERATION_ROUTES and e.status not in NOT_FINAL
        )

    @property
    def acr_requests_per_operation(self) -> float | None:
        operations = self.acr_operations
        return self.requests("acr") / operations if operations else None

    @property
    def deletions_done(self) -> int:
        return sum(1 for e in self.entries if e.route in DELETE_ROUTES and e.status in (202, 404))

    def phases(self) -> dict[str, list[float]]:
        """[first, last] request time of each phase, seconds after the child started."""
        spans: dict[str, list[float]] = {}
        for e in self.entries:
            if e.route in LISTING_ROUTES:
                phase = "listing"
            elif e.route in DELETE_ROUTES:
                phase = "deleting"
            elif e.service == "devops":
                phase = "lookups"
            else:
                continue
            at = round(e.at - self.started_at, 3)
            span = spans.setdefault(phase, [at, at])
            span[0], span[1] = min(span[0], at), max(span[1], at)
        return spans

    @property
    def summary(self) -> dict[str, Any]:
        summary = self.report.get("summary")
        return summary if isinstance(summary, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        child = self.child
        return {
            "program": self.program,
            "exit_code": child.returncode,
            "wall_s": round(child.wall_s, 3),
            "cpu_s": round(child.cpu_s, 3),
            "user_s": round(child.user_s, 3),
            "sys_s": round(child.sys_s, 3),
            "peak_rss_mb": round(child.max_rss_mb, 1),
            "emulator_cpu_s": round(self.emulator_cpu_s, 3),
            "load_before": round(self.load_before, 2),
            "requests": {
                "acr": self.requests("acr"),
                "devops": self.requests("devops"),
                "identity": self.requests("identity"),
            },
            "requests_by_route": self.by_route(),
            "requests_by_status": self.by_status(),
            "acr_operations": self.acr_operations,
            "acr_requests_per_operation": _round(self.acr_requests_per_operation, 4),
            "deletions_done": self.deletions_done,
            "phases_s": self.phases(),
            "summary": self.summary,
            "tags_deleted": len(self.deleted_tags),
            "manifests_deleted": len(self.deleted_manifests),
            "stderr_tail": child.stderr.strip().splitlines()[-5:] if child.returncode else [],
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def measure(
    workload: Workload,
    program: str,
    *,
    concurrency: int,
    dry_run: bool = False,
    python: str = sys.executable,
) -> Measurement:
    """Run `program` (`product` or `baseline`) once against freshly seeded emulators."""
    argv = {
        "product": [python, "-m", "cleanup", "--json", *(["--dry-run"] if dry_run else [])],
        "baseline": [python, "-m", "bench.baseline"],
    }[program]
    with emulators_for(workload) as emu:
        tags_before, manifests_before = registry_contents(emu)
        env = child_env(emu, concurrency, max_deletions=max(1000, 2 * workload.pr_tags))
        if workload.write_budget is not None:
            writes, window = workload.write_budget
            emu.acr.knobs.write_budget = Budget(writes, window)  # its first window starts now
        emu.log.clear()
        load = os.getloadavg()[0]
        cpu_before = _self_cpu()
        started = time.time()
        child = run_child(argv, env)
        emulator_cpu = _self_cpu() - cpu_before
        entries = emu.log.entries()
        tags_after, manifests_after = registry_contents(emu)
    try:
        report = json.loads(child.stdout) if child.stdout.strip() else {}
    except ValueError:
        report = {}
    return Measurement(
        workload=workload.name,
        program=program,
        child=child,
        emulator_cpu_s=emulator_cpu,
        entries=entries,
        report=report if isinstance(report, dict) else {},
        deleted_tags=tags_before - tags_after,
        deleted_manifests=manifests_before - manifests_after,
        started_at=started,
        load_before=load,
    )
