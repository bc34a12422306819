"""python3 -m conduit: the datastore, compute, demo and bench commands.

Each command imports `flux` only when it runs, so `--help` works anywhere
and a Python that cannot import flux gets one clear line instead of a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def whole(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number, at least `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected a whole number from {least}, not {text!r}")
        return value

    return parse


count = whole(0)
positive = whole(1)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected seconds, 0 or more, not {text!r}")
    return value


def ranks(text: str) -> list[int]:
    try:
        return [int(r) for r in text.split(",") if r != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ranks like 0,1,2, not {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m conduit",
        description="Stream JSON packets from Flux compute jobs to a datastore job.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ds = sub.add_parser("datastore", help="run as a Flux job: load the module, keep the store")
    ds.add_argument(
        "--packets",
        type=count,
        default=5,
        metavar="N",
        help="finish after N compute packets are stored (0: run until cancelled; default 5)",
    )
    ds.add_argument(
        "--fresh", action="store_true", help="discard an unfinished store instead of resuming it"
    )
    ds.add_argument("--quiet", action="store_true", help="do not print the store after each packet")
    ds.add_argument(
        "--module",
        metavar="PATH",
        help="conduit.so to load (default: $CONDUIT_MODULE, module/conduit.so, "
        "then the broker's module path)",
    )
    ds.add_argument(
        "--module-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="argument for the module: max-data=BYTES or backlog=PUTS (repeatable)",
    )

    co = sub.add_parser(
        "compute", help="run as a Flux job: put one packet, wait for it to be stored, sleep"
    )
    co.add_argument("seconds", type=seconds, help="seconds to sleep after the packet is stored")
    co.add_argument(
        "--timeout",
        type=seconds,
        default=30.0,
        help="give up if no datastore stores the packet within this many seconds (default 30)",
    )

    de = sub.add_parser(
        "demo", help="inside an instance: a datastore, N computes, the attach stream"
    )
    de.add_argument(
        "--computes",
        type=positive,
        metavar="N",
        help="number of computes (default 5, or one per rank if the instance has more)",
    )
    de.add_argument(
        "--datastore-rank", type=count, metavar="RANK", help="run the datastore on this rank"
    )
    de.add_argument(
        "--compute-ranks",
        type=ranks,
        metavar="R,R,...",
        help="spread the computes over these ranks (default: all ranks)",
    )
    de.add_argument(
        "--sleep", type=seconds, default=1.0, help="seconds each compute sleeps (default 1)"
    )
    de.add_argument(
        "--timeout",
        type=seconds,
        default=120.0,
        help="give up after this many seconds (default 120)",
    )

    be = sub.add_parser(
        "bench", help="inside an instance: conduit throughput and latency against raw Flux RPC"
    )
    be.add_argument(
        "--producers",
        type=ranks,
        default=[1, 2, 4],
        metavar="P,P,...",
        help="producer counts to run (default 1,2,4)",
    )
    be.add_argument(
        "--packets",
        type=positive,
        default=2000,
        metavar="M",
        help="packets per producer (default 2000)",
    )
    be.add_argument(
        "--size",
        type=positive,
        default=64,
        metavar="S",
        help="bytes of data per packet (default 64)",
    )
    be.add_argument(
        "--window",
        type=positive,
        default=256,
        help="requests each producer keeps in flight, on both paths (default 256)",
    )
    be.add_argument(
        "--repeat", type=positive, default=3, help="rounds; the median run is reported (default 3)"
    )
    be.add_argument(
        "--datastore-rank",
        type=count,
        default=0,
        metavar="RANK",
        help="rank of the datastore and of the echo (default 0)",
    )
    be.add_argument("--json", metavar="FILE", help="write the results as JSON")
    be.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw throughput and latency against P (needs matplotlib)",
    )

    pr = sub.add_parser("produce", help="run as a Flux job by bench and the tests: pipelined puts")
    pr.add_argument(
        "--topic", default="conduit.put", help="conduit.put, or an echo such as broker.ping"
    )
    pr.add_argument("--rank", type=count, help="destination rank for topics other than conduit.put")
    pr.add_argument("--count", type=positive, default=1000, help="packets to send (default 1000)")
    pr.add_argument(
        "--size", type=positive, default=64, help="bytes of data per packet (default 64)"
    )
    pr.add_argument("--window", type=positive, default=64, help="requests in flight (default 64)")
    pr.add_argument(
        "--retry-for",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="resend packets refused by a restarting datastore for this long",
    )
    pr.add_argument(
        "--start-at",
        type=seconds,
        default=0.0,
        metavar="EPOCH",
        help="wait until this time before sending",
    )

    sub.add_parser(
        "store", help="print the durable store (what an unfinished datastore left in the KVS)"
    )

    pl = sub.add_parser("plot", help="draw a bench --json file as a PNG (needs matplotlib)")
    pl.add_argument("results", help="bench results (JSON)")
    pl.add_argument("png", help="output image")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "plot":
        import json
        from pathlib import Path

        from conduit import bench

        bench.require_matplotlib()
        bench.plot(json.loads(Path(args.results).read_text()), args.png)
        return 0
    try:
        import flux  # noqa: F401
    except ImportError as exc:
        print(
            f"conduit {args.command}: this Python ({sys.executable}) cannot import flux ({exc}); "
            "run it with `flux python -m conduit ...`, or install flux-python==0.88.0",
            file=sys.stderr,
        )
        return 2
    if args.command == "datastore":
        from conduit import datastore

        return datastore.main(args.packets, args.fresh, args.quiet, args.module, args.module_arg)
    if args.command == "store":
        from conduit import datastore

        return datastore.show_store()
    if args.command == "compute":
        from conduit import compute

        return compute.main(args.seconds, args.timeout)
    if args.command == "bench":
        from conduit import bench

        return bench.main(
            args.producers, args.packets, args.size, args.window, args.repeat,
            args.datastore_rank,
            args.json, args.plot,
        )  # fmt: skip
    if args.command == "produce":
        from conduit import producer

        load = producer.Load(
            args.topic, args.rank, args.count, args.size, args.window, args.retry_for
        )
        return producer.main(load, args.start_at)
    from conduit import demo

    return demo.run(
        args.computes, args.datastore_rank, args.compute_ranks, args.sleep, args.timeout
    )
