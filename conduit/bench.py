"""Throughput and latency of the conduit against raw Flux RPC, in one instance.

For each producer count P: P producer jobs, spread over the ranks, send M
packets of S bytes each through the conduit to one datastore, one packet
per request ("conduit") and B packets per request ("batched"); then the
same P x M x S go to broker.ping (Flux's built-in echo) on the
datastore's rank, one per request ("raw").  The ratio of each conduit
path's packets/s to raw round trips/s says how much of what Flux's RPC
carries the conduit delivers.  The "loop" path is the client API as a
user writes it: one Conduit.send per packet, flush at the end.

The "follow" path is the batched one with a consumer (`conduit follow`,
on the rank with the fewest producers) reading the run's packets as the
datastore stores them: its rate, and how far behind the datastore it
ends; the batched path runs without one, so that a consumer's CPU does
not count against it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import flux
import flux.job
import flux.progress
import flux.resource

from conduit import output
from conduit.errors import ConduitError, connect
from conduit.jobs import attach, cancel_all, submit, wait_location
from conduit.protocol import PUT, topic

RAW_TOPIC = "broker.ping"
JOB_TIMEOUT = 300.0
KINDS = ("conduit", "batched", "raw", "loop", "follow")
FOLLOWED = "follow"  # the batched path, with a consumer reading what it stores


@dataclass
class Run:
    kind: str  # one of KINDS
    producers: int
    packets: int  # acknowledged
    lost: int  # sent but neither acknowledged nor refused
    errors: int
    seconds: float
    per_second: float
    mb_per_second: float
    p50_ms: float
    p99_ms: float
    round: int = 0  # of --repeat, from 0


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

    def __init__(self, h: flux.Flux, args: argparse.Namespace) -> None:
        self.h = h
        self.packets = args.packets
        self.size = args.size
        self.batch = args.batch
        self.in_flight = args.in_flight
        self.rank = args.datastore_rank
        # Jobs go to ranks that are up: a testbed has room for more nodes than it runs.
        up = sorted(flux.resource.resource_list(h).get().up.ranks)
        if self.rank not in up:
            raise ConduitError(
                f"--datastore-rank: rank {self.rank} is not up; the ranks up are "
                f"{','.join(map(str, up))}"
            )
        # the datastore's rank last, so that the round-robin starts after it
        at = up.index(self.rank)
        self.ranks = up[at + 1 :] + up[: at + 1]
        self.stream = args.stream
        self.consumers: list[dict[str, Any]] = []  # one per batched run
        self.datastore: flux.job.JobID | None = None
        self.jobs: list[flux.job.JobID] = []  # every job submitted, to cancel on failure
        self.expected = 0  # packets the datastore must store in all
        self.bar: Any = None

    def start_datastore(self, total: int) -> None:
        self.expected = total
        argv = ["datastore", "--stream", self.stream, "--packets", str(total), "--fresh", "--quiet"]
        self.datastore = submit(self.h, argv, "datastore", rank=self.rank)
        self.jobs.append(self.datastore)
        wait_location(self.h, self.datastore, time.monotonic() + JOB_TIMEOUT)

    def finish_datastore(self) -> None:
        assert self.datastore is not None
        with attach(self.datastore) as stream:
            stream.finish(JOB_TIMEOUT)
        result = output.parse("\n".join(stream.lines))
        if not result.summary or result.summary["stored"] != self.expected or not result.finished:
            raise ConduitError(
                f"datastore {self.datastore.f58} did not store {self.expected} packets:\n"
                + "\n".join(stream.lines + [stream.stderr()])
            )

    def producers(self, kind: str, count: int) -> list[flux.job.JobID]:
        start_at = time.time() + 0.6 + 0.15 * count  # all start together
        argv = [
            "produce", "--topic", RAW_TOPIC if kind == "raw" else PUT, "--rank", str(self.rank),
            "--count", str(self.packets), "--size", str(self.size),
            "--batch", str(self.batch if kind in ("batched", "loop", FOLLOWED) else 1),
            "--in-flight", str(self.in_flight), "--start-at", f"{start_at:.3f}",
            "--stream", self.stream,
        ]  # fmt: skip
        argv += ["--loop"] if kind == "loop" else []
        jobs = [submit(self.h, argv, "producer", rank=rank) for rank in self.placement(count)]
        self.jobs.extend(jobs)
        return jobs

    def placement(self, count: int) -> list[int]:
        """Ranks of `count` producers: round-robin over the ranks up, from the one after
        the datastore's (which holds a job already); every path gets the same."""
        return [self.ranks[i % len(self.ranks)] for i in range(count)]

    def run(self, kind: str, count: int) -> Run:
        consumer = self.consumer(count) if kind == FOLLOWED else None
        jobs = self.producers(kind, count)
        deadline = time.monotonic() + JOB_TIMEOUT
        total = count * self.packets
        base = self.stored() if kind != "raw" else None  # progress of conduit runs
        shown = 0
        for jobid in jobs:
            finished = flux.job.result_async(self.h, jobid)
            while True:
                try:
                    finished.wait_for(0.25)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise ConduitError(f"producer {jobid.f58} did not finish in time") from None
                    if base is not None and (stored := self.stored()) is not None:
                        now = min(stored - base, total)
                        self.advance(now - shown)
                        shown = max(shown, now)
        reports = []
        for jobid in jobs:
            with attach(jobid) as stream:
                stream.finish(max(deadline - time.monotonic(), 1))
            if not stream.lines:
                raise ConduitError(f"producer {jobid.f58} printed no report: {stream.stderr()}")
            reports.append(json.loads(stream.lines[-1]))
        self.advance(total - shown)
        if consumer is not None:
            self.consumers.append(self.consumed(consumer, count, reports, deadline))
        return summarize(kind, self.size, reports)

    def consumer(self, count: int) -> subprocess.Popen[str]:
        """`conduit follow` of the packets the next run puts, on the least loaded rank."""
        after = self.h.rpc(topic(self.stream, "stats-get"), nodeid=self.rank).get()["last_id"]
        load = dict.fromkeys(self.ranks, 0)
        load[self.rank] += 1
        for r in self.placement(count):
            load[r] += 1
        rank = min(load, key=load.__getitem__)
        # Its lines go to /dev/null there: through flux exec they would load the brokers.
        argv = [
            "flux", "exec", "-r", str(rank), "sh", "-c", 'exec "$@" >/dev/null', "sh",
            sys.executable, "-m", "conduit", "follow", self.stream, "--after", str(after),
            "--count", str(count * self.packets), "--stats",
        ]  # fmt: skip
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def consumed(
        self,
        consumer: subprocess.Popen[str],
        count: int,
        reports: list[dict[str, Any]],
        deadline: float,
    ) -> dict[str, Any]:
        """The consumer's rate over the run, and its lag behind the last acknowledgement."""
        try:
            _, err = consumer.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            consumer.kill()
            raise ConduitError("the consumer did not read the run's packets in time") from None
        if consumer.returncode != 0:
            raise ConduitError(f"the consumer failed: {err.strip()}")
        stats = json.loads(err.splitlines()[-1])
        start = min(r["start"] for r in reports)
        return {
            "producers": count,
            "packets": stats["packets"],
            "per_second": round(stats["packets"] / (stats["last_at"] - start), 1),
            "lag_ms": round((stats["last_at"] - max(r["end"] for r in reports)) * 1000, 1),
            "peak_buffer_bytes": stats["peak_buffer_bytes"],
        }

    def stored(self) -> int | None:
        """Packets the conduit has stored so far, in all runs.

        None once the datastore has its count and has removed the module.
        """
        try:
            stats = self.h.rpc(topic(self.stream, "stats-get"), nodeid=self.rank).get()
            return int(stats["stored"])
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


def ratios(runs: list[Run], kind: str, over: str = "raw") -> dict[str, float]:
    """Per P, packets/s of path `kind` over those of path `over` (raw round trips/s)."""
    by = {(r.kind, r.producers): r for r in runs}
    return {
        str(p): round(by[kind, p].per_second / by[over, p].per_second, 3)
        for (k, p) in by
        if k == kind and (over, p) in by
    }


RATIOS = (("conduit", "raw"), ("batched", "raw"), ("loop", "raw"), ("loop", "batched"))


def round_ratios(runs: list[Run]) -> dict[str, dict[str, list[float]]]:
    """Each ratio of RATIOS, per P, in each round, lowest first: how much one run varies.

    The two runs of a round ran seconds apart, so their ratio holds less of
    the machine's drift than one of medians taken across rounds.
    """
    by = {(r.kind, r.producers, r.round): r.per_second for r in runs}
    spread: dict[str, dict[str, list[float]]] = {}
    for kind, over in RATIOS:
        per_p = spread.setdefault(f"{kind}/{over}", {})
        for (k, p, n), rate in sorted(by.items()):
            if k == kind and (over, p, n) in by:
                per_p.setdefault(str(p), []).append(round(rate / by[over, p, n], 3))
        for values in per_p.values():
            values.sort()
    return spread


def consumer_medians(consumers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per P, the consumer run of median rate."""
    by: dict[int, list[dict[str, Any]]] = {}
    for c in consumers:
        by.setdefault(c["producers"], []).append(c)
    picked = {}
    for p, cs in sorted(by.items()):
        ordered = sorted(cs, key=lambda c: c["per_second"])
        picked[str(p)] = ordered[(len(ordered) - 1) // 2]
    return picked


def main(args: argparse.Namespace) -> int:
    h = connect()
    bench = Bench(h, args)
    producers, repeat, packets = args.producers, args.repeat, args.packets
    config = {
        "producers": producers, "packets": packets, "size": args.size, "batch": args.batch,
        "in_flight": args.in_flight, "repeat": repeat, "datastore_rank": args.datastore_rank,
        "ranks": len(bench.ranks), "raw_topic": RAW_TOPIC,
    }  # fmt: skip
    total = repeat * sum(producers) * packets
    if sys.stderr.isatty():
        bench.bar = flux.progress.ProgressBar(
            total=len(KINDS) * total, before="bench {count}/{total} packets ", style="bar"
        )
        bench.bar.start()
    runs: list[Run] = []
    try:
        bench.start_datastore((len(KINDS) - 1) * total)  # every path but raw
        for round_ in range(repeat):
            # rotate which path goes first, so that drift favours none
            first = round_ % len(KINDS)
            kinds = KINDS[first:] + KINDS[:first]
            for count in producers:
                runs.extend(replace(bench.run(kind, count), round=round_) for kind in kinds)
        bench.finish_datastore()
    except BaseException:
        cancel_all(h, bench.jobs, "conduit bench stopped")
        raise
    finally:
        if bench.bar:
            bench.bar.stop()
    picked = medians(runs)
    results: dict[str, Any] = {
        "config": config,
        "runs": [asdict(r) for r in picked],
        "ratio": ratios(picked, "conduit"),
        "batched_ratio": ratios(picked, "batched"),
        "loop_ratio": ratios(picked, "loop"),
        "loop_batched_ratio": ratios(picked, "loop", over="batched"),
        "round_ratios": round_ratios(runs),
        "consumer": consumer_medians(bench.consumers),
        "all_runs": [asdict(r) for r in runs],
    }
    print(f"median of {repeat} rounds; {packets} packets of {args.size} bytes per producer")
    print(table(picked))
    for p in results["ratio"]:
        print(
            f"P={p}: conduit/raw = {results['ratio'][p]:.2f}, "
            f"batched ({args.batch} per request)/raw = {results['batched_ratio'][p]:.2f}, "
            f"loop/batched = {results['loop_batched_ratio'][p]:.2f}"
        )
        if repeat > 1:
            spread = ", ".join(
                f"{name} {values[p][0]:.2f} to {values[p][-1]:.2f}"
                for name, values in results["round_ratios"].items()
                if p in values
            )
            print(f"P={p}: ratios of one round, lowest to highest: {spread}")
    for p, c in results["consumer"].items():
        lag = c["lag_ms"]  # below 0: it read the last packet before its producer had the ack
        end = (
            f"{lag:.1f} ms behind the datastore at the end"
            if lag >= 0
            else f"level with the datastore at the end ({-lag:.1f} ms before the last ack)"
        )
        print(f"P={p}: consumer {c['per_second']:.0f} pkt/s following the follow path, {end}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {args.json}")
    lost = sum(r.lost + r.errors for r in runs)
    return 0 if lost == 0 else 1
