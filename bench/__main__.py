"""`python -m bench`: the product beside the baseline and the lower bound, on W1-W4.

    python -m bench                  # everything (under 10 minutes on 2 cores)
    python -m bench --quick          # the same workloads, smaller (about a minute)
    python -m bench --only W1,W3     # some of them
    python -m bench --concurrency 16 --output bench/results/latest.json

Every measurement seeds fresh emulators (in this process) and runs the measured program in a
fresh child process: the product as `python -m cleanup --json` with the emulators' environment,
`CLEANUP_CONCURRENCY` (default 16, the product's default) and a `CLEANUP_MAX_DELETIONS` above
the workload's plan; the baseline as `python -m bench.baseline`. Planning CPU (W2) is measured
in a child of its own (`python -m bench.planning`). The baseline runs on W1 only: on W2 it would
take hours and on W3 its sequential deletions never meet the budget, so those figures are not
meaningful. W2's product run deletes for real (42,000 manifests, about 80 s); `--w2-dry-run`
measures the scan, lookups and plan only.

Prints a table of figures and one of targets, and writes every figure to `--output` as JSON.
Exit status 0 when every target measured is met, 1 otherwise. Speed is checked here, never by
the tests.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.lower_bound import lower_bound
from bench.measure import ROOT, SPAWNER, Measurement, measure, run_child
from bench.workloads import SIZES, Workload

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"
RSS_LIMIT_MB = 250.0
PLANNING_LIMIT_S = 0.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads (same shapes)")
    parser.add_argument(
        "--size", choices=sorted(SIZES), default=None, help="workload size (overrides --quick)"
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="W1[,W2]", help="run only these"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--w2-dry-run", action="store_true", help="W2 as a dry run (no deletions, faster)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline runs")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        metavar="N",
        help="W1 product runs; the median wall time counts (the machine is shared)",
    )
    return parser.parse_args(argv)


def _say(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


class Target:
    """One figure against its target."""

    def __init__(
        self, workload: str, figure: str, value: float | None, target: str, met: bool
    ) -> None:
        self.workload = workload
        self.figure = figure
        self.value = value
        self.target = target
        self.met = met

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "figure": self.figure,
            "value": self.value,
            "target": self.target,
            "met": self.met,
        }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def _at_least(value: float | None, limit: float) -> bool:
    return value is not None and value >= limit


def _at_most(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit


class Bench:
    """Runs the workloads and collects figures and targets."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        size = args.size or ("quick" if args.quick else "full")
        self.size = size
        self.workloads = SIZES[size]
        only = {n.strip().upper() for item in args.only for n in item.split(",") if n.strip()}
        unknown = only - set(self.workloads)
        if unknown:
            raise SystemExit(f"bench: unknown workload(s) {', '.join(sorted(unknown))}")
        self.selected = [n for n in self.workloads if not only or n in only]
        self.results: dict[str, dict[str, Any]] = {}
        self.targets: list[Target] = []
        self.measured: dict[str, Measurement] = {}

    # --- running ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        compile_programs()
        load_before = os.getloadavg()
        runners: dict[str, Callable[[Workload], None]] = {
            "W1": self.w1,
            "W2": self.w2,
            "W3": self.w3,
            "W4": self.w4,
        }
        for name in self.selected:
            workload = self.workloads[name]
            _say(
                f"{name} ({workload.title}): {workload.tags} tags in {workload.repositories} "
                f"repositories, {workload.distinct_pull_requests} pull requests"
            )
            runners[name](workload)
        return {
            "schemaVersion": 1,
            "size": self.size,
            "concurrency": self.args.concurrency,
            "startedAt": datetime.now(UTC).isoformat(timespec="seconds"),
            "harness_s": round(time.perf_counter() - started, 1),
            "machine": machine(),
            "tree": tree_state(),
            "load_average": {
                "before": [round(x, 2) for x in load_before],
                "after": [round(x, 2) for x in os.getloadavg()],
            },
            "workloads": self.results,
            "targets": [t.to_dict() for t in self.targets],
            "allMet": all(t.met for t in self.targets),
        }

    def _measure(self, workload: Workload, program: str, *, dry_run: bool = False) -> Measurement:
        _say(f"  {program}{' (dry run)' if dry_run else ''} ...")
        m = measure(workload, program, concurrency=self.args.concurrency, dry_run=dry_run)
        _say(
            f"  {program}: {m.child.wall_s:.2f} s wall, {m.child.cpu_s:.2f} s CPU, "
            f"exit {m.child.returncode}"
        )
        if m.child.returncode not in (0, 1):
            _say("  stderr: " + " | ".join(m.child.stderr.strip().splitlines()[-5:]))
        return m

    def _record(self, workload: Workload, measurements: list[Measurement]) -> dict[str, Any]:
        bound = lower_bound(workload, self.args.concurrency)
        expected = workload.stale_tags()
        entry: dict[str, Any] = {
            "title": workload.title,
            "shape": {
                "repositories": workload.repositories,
                "tags": workload.tags,
                "pull_request_tags": workload.pr_tags,
                "pull_requests": workload.distinct_pull_requests,
                "active_pull_requests": workload.active_pull_requests,
                "stale_tags": len(expected),
                "latency_ms": workload.latency_ms,
                "write_budget": workload.write_budget,
                "devops_faults": [
                    {"status": f.status, "probability": round(f.probability, 4)}
                    for f in workload.devops_faults
                ],
            },
            "lower_bound": bound.to_dict(),
        }
        for m in measurements:
            data = m.to_dict()
            if m.program == "product" and not data["summary"].get("stopped"):
                data["deleted_as_expected"] = (
                    m.deleted_tags == expected if m.deletions_done else None
                )
            data["wall_over_lower_bound"] = _ratio(m.child.wall_s, bound.seconds or None)
            entry[m.program] = data
            self.measured[f"{workload.name}.{m.program}"] = m
        self.results[workload.name] = entry
        return entry

    def w1(self, workload: Workload) -> None:
        repeats = sorted(
            (self._measure(workload, "product") for _ in range(max(1, self.args.repeat))),
            key=lambda m: m.child.wall_s,
        )
        product = repeats[len(repeats) // 2]
        runs = [product]
        if workload.baseline and not self.args.no_baseline:
            runs.append(self._measure(workload, "baseline"))
        entry = self._record(workload, runs)
        entry["product"]["wall_runs_s"] = [round(m.child.wall_s, 3) for m in repeats]
        bound = entry["lower_bound"]
        name = workload.name
        if len(runs) > 1:
            speedup = _ratio(runs[1].child.wall_s, product.child.wall_s)
            entry["baseline_over_product"] = speedup
            self.targets.append(
                Target(
                    name, "wall time, baseline / product", speedup, ">= 30", _at_least(speedup, 30)
                )
            )
        over = entry["product"]["wall_over_lower_bound"]
        self.targets.append(
            Target(name, "wall time / lower bound", over, "<= 1.5", _at_most(over, 1.5))
        )
        per_op = product.acr_requests_per_operation
        self.targets.append(
            Target(
                name,
                "ACR requests per operation",
                None if per_op is None else round(per_op, 3),
                "<= 1.2",
                _at_most(per_op, 1.2),
            )
        )
        devops = product.requests("devops")
        distinct = workload.distinct_pull_requests
        self.targets.append(
            Target(
                name, "DevOps requests", devops, f"<= {distinct} (distinct PRs)", devops <= distinct
            )
        )
        self.targets.append(
            Target(
                name,
                "deleted exactly the stale tags",
                len(product.deleted_tags),
                f"== {bound['deletions']} expected",
                product.deleted_tags == workload.stale_tags(),
            )
        )

    def w2(self, workload: Workload) -> None:
        product = self._measure(workload, "product", dry_run=self.args.w2_dry_run)
        entry = self._record(workload, [product])
        entry["product"]["dry_run"] = self.args.w2_dry_run
        _say("  planning CPU ...")
        child = run_child(
            [sys.executable, "-m", "bench.planning", workload.name, "--size", self.size],
            env=_planning_env(),
        )
        planning: dict[str, Any] = {}
        if child.returncode == 0:
            planning = json.loads(child.stdout)
        else:
            _say("  planning failed: " + child.stderr.strip()[-300:])
        entry["planning"] = planning
        rss = entry["product"]["peak_rss_mb"]
        self.targets.append(
            Target(
                workload.name,
                "peak RSS of the whole process, MB"
                + (" (dry run)" if self.args.w2_dry_run else ""),
                rss,
                f"<= {RSS_LIMIT_MB:g}",
                _at_most(rss, RSS_LIMIT_MB),
            )
        )
        plan_cpu = planning.get("plan_cpu_median_s")
        self.targets.append(
            Target(
                workload.name,
                f"CPU of planning alone ({planning.get('tags', '?')} tags), s",
                plan_cpu,
                f"<= {PLANNING_LIMIT_S:g}",
                _at_most(plan_cpu, PLANNING_LIMIT_S),
            )
        )

    def w3(self, workload: Workload) -> None:
        product = self._measure(workload, "product")
        entry = self._record(workload, [product])
        assert workload.write_budget is not None  # noqa: S101 - W3 is the throttled workload
        writes, window = workload.write_budget
        deletions = product.deletions_done
        ideal = deletions / writes * window if deletions else None
        figure = _ratio(product.child.wall_s, ideal)
        entry["deletions_over_budget_s"] = ideal
        entry["wall_over_budget"] = figure
        failed = product.summary.get("failed")
        self.targets.append(
            Target(workload.name, "deletions failed", failed, "== 0", failed == 0 and deletions > 0)
        )
        self.targets.append(
            Target(
                workload.name,
                "wall time / (deletions / write budget)",
                figure,
                "<= 1.15",
                _at_most(figure, 1.15),
            )
        )

    def w4(self, workload: Workload) -> None:
        product = self._measure(workload, "product")
        entry = self._record(workload, [product])
        reference = self.measured.get(f"{workload.same_result_as}.product")
        expected_tags = workload.stale_tags()
        same_as_plan = product.deleted_tags == expected_tags
        same_as_run = None
        if reference is not None:
            same_as_run = (
                product.deleted_tags == reference.deleted_tags
                and product.deleted_manifests == reference.deleted_manifests
            )
        entry["same_as_fault_free_plan"] = same_as_plan
        entry["same_as_fault_free_run"] = same_as_run
        entry["faults_injected"] = entry["product"]["requests_by_status"].get("devops", {})
        self.targets.append(
            Target(
                workload.name,
                f"deleted set identical to {workload.same_result_as}'s fault-free plan"
                + ("" if same_as_run is not None else " (W1 not run: seed's plan only)"),
                len(product.deleted_tags),
                f"== {len(expected_tags)} tags, same set",
                same_as_plan and same_as_run is not False,
            )
        )


def _planning_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANUP_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def tree_state() -> dict[str, Any]:
    """The commit measured, and the product files changed on top of it (a shared tree)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args],  # noqa: S607 - git from PATH, as a developer runs it
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError:
            return ""
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "cleanup", "requirements.txt")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": [line.split(maxsplit=1)[-1] for line in changed.splitlines()],
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


# --- the table ---------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def render(results: dict[str, Any]) -> str:
    """The two tables (figures, targets) as Markdown."""
    head = (
        "| workload | program | wall s | CPU s | peak RSS MB | ACR req | ACR ops | ACR req/op "
        "| DevOps req | deleted | failed | lower bound s | wall / bound | emulators CPU s | load |"
    )
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for name, entry in results["workloads"].items():
        bound = entry["lower_bound"]["seconds"] or None
        for program in ("product", "baseline"):
            data = entry.get(program)
            if data is None:
                continue
            label = program + (" (dry run)" if data.get("dry_run") else "")
            lines.append(
                "| "
                + " | ".join(
                    _cell(v)
                    for v in (
                        name,
                        label,
                        data["wall_s"],
                        data["cpu_s"],
                        data["peak_rss_mb"],
                        data["requests"]["acr"],
                        data["acr_operations"],
                        data["acr_requests_per_operation"],
                        data["requests"]["devops"],
                        data["deletions_done"],
                        data["summary"].get("failed"),
                        bound,
                        data["wall_over_lower_bound"],
                        data["emulator_cpu_s"],
                        data["load_before"],
                    )
                )
                + " |"
            )
    lines.append("")
    lines.append("| workload | figure | value | target | met |")
    lines.append("|---|---|---|---|---|")
    lines.extend(
        f"| {t['workload']} | {t['figure']} | {_cell(t['value'])} | {t['target']} "
        f"| {'yes' if t['met'] else '**no**'} |"
        for t in results["targets"]
    )
    return "\n".join(lines)


def compile_programs() -> None:
    """Compile the measured programs to bytecode, as installing them would.

    Python reads `__pycache__` even where it may not write it (PYTHONDONTWRITEBYTECODE, set on
    some machines): without this, a checkout compiles every module of the product on every
    start, about 0.1 s that an installed product never pays.
    """
    for package in ("cleanup", "bench"):
        compileall.compile_dir(ROOT / package, quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    try:
        results = bench.run()
    finally:
        SPAWNER.close()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(render(results) + "\n")
    _say(f"finished in {results['harness_s']} s; figures in {args.output}")
    return 0 if results["allMet"] else 1


if __name__ == "__main__":
    sys.exit(main())
