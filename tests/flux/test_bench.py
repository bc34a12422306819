"""The benchmark, end to end: every path, in a real instance (small counts; no timing)."""

from __future__ import annotations

from conduit.testbed.native import NativeInstance
from tests.checks import run_bench


def test_bench_runs_every_path_and_loses_nothing(flux_instance: NativeInstance) -> None:
    results = run_bench(flux_instance, producers=4, packets=50)
    assert results["config"]["ranks"] == 3  # producers round-robin over every rank up
    assert set(results["loop_batched_ratio"]) == {"4"}
    # one round: each round's ratio is the ratio of the reported runs
    spread = results["round_ratios"]
    assert spread["loop/batched"] == {"4": [results["loop_batched_ratio"]["4"]]}
    assert spread["conduit/raw"] == {"4": [results["ratio"]["4"]]}
    assert spread["batched/raw"] == {"4": [results["batched_ratio"]["4"]]}
