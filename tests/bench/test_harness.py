"""The benchmark harness end to end on the tiny workloads: every figure lands in the JSON.

Speed is the harness's business, never the tests': nothing here asserts a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.lower_bound import lower_bound
from bench.workloads import SIZES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MEASURED = (
    "wall_s",
    "cpu_s",
    "peak_rss_mb",
    "emulator_cpu_s",
    "requests",
    "requests_by_route",
    "requests_by_status",
    "acr_operations",
    "acr_requests_per_operation",
    "deletions_done",
    "summary",
    "wall_over_lower_bound",
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One harness run over the tiny workloads, its JSON read back."""
    output = Path(tmp_path_factory.mktemp("bench")) / "latest.json"
    main(["--size", "tiny", "--output", str(output)])
    return json.loads(output.read_text(encoding="utf-8"))


def test_every_workload_is_measured(results):
    """W1 to W4 each have the product's figures; W1 has the baseline's too."""
    assert set(results["workloads"]) == {"W1", "W2", "W3", "W4"}
    assert "baseline" in results["workloads"]["W1"]
    for entry in results["workloads"].values():
        assert entry["product"]["exit_code"] == 0


@pytest.mark.parametrize("workload", ["W1", "W2", "W3", "W4"])
def test_every_figure_is_present(results, workload):
    """Each measurement carries wall, CPU, RSS, requests per service and route, and ratios."""
    product = results["workloads"][workload]["product"]
    assert set(MEASURED) <= set(product)
    assert set(product["requests"]) == {"acr", "devops", "identity"}
    assert "acr" in product["requests_by_route"]
    assert "lower_bound" in results["workloads"][workload]


def test_workload_specific_figures_are_present(results):
    """Baseline ratio (W1), planning CPU (W2), budget ratio (W3), same result (W4)."""
    workloads = results["workloads"]
    assert "baseline_over_product" in workloads["W1"]
    assert "plan_cpu_median_s" in workloads["W2"]["planning"]
    assert "wall_over_budget" in workloads["W3"]
    assert workloads["W4"]["same_as_fault_free_run"] is True


def test_targets_name_every_figure_of_the_issue(results):
    """The targets list covers every figure the issue sets a target for."""
    figures = [(t["workload"], t["figure"]) for t in results["targets"]]
    for workload, figure in [
        ("W1", "wall time, baseline / product"),
        ("W1", "wall time / lower bound"),
        ("W1", "ACR requests per operation"),
        ("W1", "DevOps requests"),
        ("W2", "peak RSS of the whole process"),
        ("W2", "CPU of planning alone"),
        ("W3", "deletions failed"),
        ("W3", "wall time / (deletions / write budget)"),
        ("W4", "deleted set identical to W1's fault-free plan"),
    ]:
        assert any(w == workload and f.startswith(figure) for w, f in figures), figure


def test_lower_bound_counts_the_fewest_requests():
    """W1's bound: 200 listing pages, 1 bulk page of all 600 pull requests, 1,260 deletions."""
    bound = lower_bound(SIZES["full"]["W1"], concurrency=16)
    assert (bound.listing_pages, bound.devops_requests, bound.deletions) == (200, 1, 1260)
    assert bound.chain == 4
    assert bound.seconds == pytest.approx(0.020 * (4 + 13 + 79))
