"""Throughput and latency of the conduit against raw Flux RPC, in one instance.

For each producer count P: P producer jobs, spread over the ranks, send M
packets of S bytes each through the conduit to one datastore; then the
same P x M x S go to broker.ping (Flux's built-in echo) on the
datastore's rank.  The ratio of the two throughputs says how much of
what Flux's RPC carries the conduit delivers.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import flux
import flux.job
import flux.progress

from conduit import output
from conduit.jobs import attach_lines, submit, wait_location
from conduit.protocol import PUT, STATS

RAW_TOPIC = "broker.ping"
JOB_TIMEOUT = 300.0


@dataclass
class Run:
    kind: str  # "conduit" or "raw"
    producers: int
    packets: int  # acknowledged
    lost: int  # sent but neither acknowledged nor refused
    errors: int
    seconds: float
    per_second: float
    mb_per_second: float
    p50_ms: float
    p99_ms: float


def summarize(kind: str, size: int, reports: list[dict[str, Any]]) -> Run:
    acked = sum(r["acked"] for r in reports)
    seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    latencies = sorted(us for r in reports for us in r["latency_us"])
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Run(
        kind=kind,
        producers=len(reports),
        packets=acked,
        lost=sum(r["unacked"] for r in reports),
        errors=sum(sum(r["errors"].values()) for r in reports),
        seconds=round(seconds, 3),
        per_second=round(acked / seconds, 1),
        mb_per_second=round(acked * size / seconds / 1e6, 3),
        p50_ms=round(cuts[49] / 1000, 3),
        p99_ms=round(cuts[98] / 1000, 3),
    )


class Bench:
    """One datastore for every conduit run; producers placed the same way for both paths."""

    def __init__(
        self, h: flux.Flux, packets: int, size: int, window: int, datastore_rank: int
    ) -> None:
        self.h = h
        self.packets = packets
        self.size = size
        self.window = window
        self.rank = datastore_rank
        self.nranks = int(h.attr_get("size"))
        self.datastore: flux.job.JobID | None = None
        self.expected = 0  # packets the datastore must store in all
        self.bar: Any = None

    def start_datastore(self, total: int) -> None:
        self.expected = total
        argv = ["datastore", "--packets", str(total), "--fresh", "--quiet"]
        self.datastore = submit(self.h, argv, "datastore", rank=self.rank)
        wait_location(self.h, self.datastore, time.monotonic() + JOB_TIMEOUT)

    def finish_datastore(self) -> None:
        assert self.datastore is not None
        text = "\n".join(attach_lines(self.datastore, time.monotonic() + JOB_TIMEOUT))
        summary = [json.loads(line) for line in text.splitlines() if line.startswith('{"stored"')]
        if not summary or summary[-1]["stored"] != self.expected or not output.parse(text).finished:
            raise RuntimeError(
                f"datastore {self.datastore.f58} did not store {self.expected} packets:\n{text}"
            )

    def producers(self, topic: str, count: int) -> list[flux.job.JobID]:
        start_at = time.time() + 0.6 + 0.15 * count  # all start together
        argv = [
            "produce", "--topic", topic, "--rank", str(self.rank),
            "--count", str(self.packets), "--size", str(self.size),
            "--window", str(self.window), "--start-at", f"{start_at:.3f}",
        ]  # fmt: skip
        # Round-robin from the rank after the datastore's, which holds one
        # job already; the raw run gets the same placement.
        return [
            submit(self.h, argv, "producer", rank=(self.rank + 1 + i) % self.nranks)
            for i in range(count)
        ]

    def run(self, kind: str, count: int) -> Run:
        jobs = self.producers(PUT if kind == "conduit" else RAW_TOPIC, count)
        deadline = time.monotonic() + JOB_TIMEOUT
        total = count * self.packets
        base = self.stored() if kind == "conduit" else None  # progress of conduit runs
        shown = 0
        for jobid in jobs:
            finished = flux.job.result_async(self.h, jobid)
            while True:
                try:
                    finished.wait_for(0.25)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"producer {jobid.f58} did not finish in time") from None
                    if base is not None and (stored := self.stored()) is not None:
                        now = min(stored - base, total)
                        self.advance(now - shown)
                        shown = max(shown, now)
        reports = []
        for jobid in jobs:
            lines = list(attach_lines(jobid, deadline))
            if not lines:
                raise RuntimeError(f"producer {jobid.f58} printed no report")
            reports.append(json.loads(lines[-1]))
        self.advance(total - shown)
        return summarize(kind, self.size, reports)

    def stored(self) -> int | None:
        """Packets the conduit has stored so far, in all runs.

        None once the datastore has its count and has removed the module.
        """
        try:
            return int(self.h.rpc(STATS, nodeid=self.rank).get()["stored"])
        except OSError:
            return None

    def advance(self, n: int) -> None:
        if self.bar and n > 0:
            self.bar.update(advance=n)


def medians(runs: list[Run]) -> list[Run]:
    """Per (path, P), the run of median throughput."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.kind, r.producers), []).append(r)
    picked = []
    for key in sorted(groups, key=lambda k: (k[1], k[0])):
        ordered = sorted(groups[key], key=lambda r: r.per_second)
        picked.append(ordered[(len(ordered) - 1) // 2])
    return picked


def table(runs: list[Run]) -> str:
    head = f"{'P':>3} {'path':<8} {'packets':>8} {'lost':>5} {'pkt/s':>9} {'MB/s':>7} {'p50 ms':>8} {'p99 ms':>8}"  # noqa: E501
    rows = [head, "-" * len(head)]
    for r in runs:
        rows.append(
            f"{r.producers:>3} {r.kind:<8} {r.packets:>8} {r.lost:>5} {r.per_second:>9.0f} "
            f"{r.mb_per_second:>7.3f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
        )
    return "\n".join(rows)


def ratios(runs: list[Run]) -> dict[str, float]:
    by = {(r.kind, r.producers): r for r in runs}
    return {
        str(p): round(by["conduit", p].per_second / by["raw", p].per_second, 3)
        for (kind, p) in by
        if kind == "conduit" and ("raw", p) in by
    }


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (thr, lat) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, color in (("conduit", "C0"), ("raw", "C1")):
        runs = [r for r in results["runs"] if r["kind"] == kind]
        ps = [r["producers"] for r in runs]
        thr.plot(ps, [r["per_second"] for r in runs], "o-", color=color, label=kind)
        lat.plot(ps, [r["p50_ms"] for r in runs], "o-", color=color, label=f"{kind} p50")
        lat.plot(ps, [r["p99_ms"] for r in runs], "o:", color=color, label=f"{kind} p99")
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


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit(
            f"conduit bench: --plot needs matplotlib, which {sys.executable} lacks; "
            "install it, or write --json and run `python3 -m conduit plot FILE.json FILE.png`"
        ) from None


def main(
    producers: Sequence[int],
    packets: int,
    size: int,
    window: int,
    repeat: int,
    datastore_rank: int,
    json_path: str | None,
    plot_path: str | None,
) -> int:
    if plot_path:
        require_matplotlib()
    h = flux.Flux()
    bench = Bench(h, packets, size, window, datastore_rank)
    config = {
        "producers": list(producers), "packets": packets, "size": size, "window": window,
        "repeat": repeat, "datastore_rank": datastore_rank, "ranks": bench.nranks,
        "raw_topic": RAW_TOPIC,
    }  # fmt: skip
    if sys.stderr.isatty():
        bench.bar = flux.progress.ProgressBar(
            total=2 * repeat * sum(producers) * packets,
            before="bench {count}/{total} packets ",
            style="bar",
        )
        bench.bar.start()
    runs: list[Run] = []
    try:
        bench.start_datastore(repeat * sum(producers) * packets)
        for round_ in range(repeat):
            # alternate which path goes first, so that drift favours neither
            kinds = ("conduit", "raw") if round_ % 2 == 0 else ("raw", "conduit")
            for count in producers:
                runs.extend(bench.run(kind, count) for kind in kinds)
        bench.finish_datastore()
    finally:
        if bench.bar:
            bench.bar.stop()
    picked = medians(runs)
    results: dict[str, Any] = {
        "config": config,
        "runs": [asdict(r) for r in picked],
        "ratio": ratios(picked),
        "all_runs": [asdict(r) for r in runs],
    }
    print(f"median of {repeat} rounds; {packets} packets of {size} bytes per producer")
    print(table(picked))
    for p, ratio in results["ratio"].items():
        print(f"P={p}: conduit/raw throughput = {ratio:.2f}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {json_path}")
    if plot_path:
        plot(results, plot_path)
        print(f"plot: {plot_path}")
    lost = sum(r.lost + r.errors for r in runs)
    return 0 if lost == 0 else 1
