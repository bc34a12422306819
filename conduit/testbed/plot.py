"""Draw a bench --json file as a PNG, on the host.  Needs matplotlib, not Flux."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from conduit.testbed.errors import TestbedError

COLORS = {"conduit": "C0", "batched": "C2", "raw": "C1", "loop": "C3", "follow": "C4"}


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise TestbedError(
            f"plotting needs matplotlib, which {sys.executable} lacks; install it "
            "(pip install matplotlib), or write --json and run "
            "`python3 -m conduit.testbed plot FILE.json FILE.png` where it is installed"
        ) from None


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (thr, lat) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, color in COLORS.items():
        runs = [r for r in results["runs"] if r["kind"] == kind]
        if not runs:
            continue
        ps = [r["producers"] for r in runs]
        thr.plot(ps, [r["per_second"] for r in runs], "o-", color=color, label=kind)
        lat.plot(ps, [r["p50_ms"] for r in runs], "o-", color=color, label=f"{kind} p50")
        lat.plot(ps, [r["p99_ms"] for r in runs], "o:", color=color, label=f"{kind} p99")
    consumer_line(thr, results)
    c = results["config"]
    thr.set(xlabel="producers (P)", ylabel="packets/s", title=f"throughput, S={c['size']} B")
    lat.set(xlabel="producers (P)", ylabel="ms", title="latency, put to stored")
    for ax in (thr, lat):
        ax.set_xticks(c["producers"])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(args: argparse.Namespace) -> int:
    require_matplotlib()
    try:
        results = json.loads(Path(args.results).read_text())
    except OSError as exc:
        raise TestbedError(f"cannot read {args.results}: {exc.strerror}") from None
    except ValueError as exc:
        raise TestbedError(f"{args.results} is not JSON: {exc}") from None
    if not isinstance(results, dict) or "runs" not in results or "config" not in results:
        raise TestbedError(f"{args.results} is not a bench --json file (no runs and config)")
    plot(results, args.png)
    print(f"plot: {args.png}")
    return 0


def consumer_line(ax: Any, results: dict[str, Any]) -> None:
    """The consumer's rate, following the batched path, on the throughput axes."""
    consumer = results.get("consumer") or {}
    if consumer:
        ps = sorted(consumer, key=int)
        rates = [consumer[p]["per_second"] for p in ps]
        ax.plot([int(p) for p in ps], rates, "s--", color="C3", label="consumer (follow)")
