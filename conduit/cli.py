"""python3 -m conduit: the command line, and its one error boundary.

Each subcommand names the module that runs it (`set_defaults(run=...)`);
that module is imported only when the command runs, so `--help` works
without Flux.  (Drawing bench results is host-side: `python3 -m
conduit.testbed plot`.)  Whatever fails ends as one line on stderr,
`conduit <command>: <what failed and what to do>`, and a non-zero exit;
--debug (or CONDUIT_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from conduit import output
from conduit.errors import NO_BINDINGS, ConduitError
from conduit.protocol import (
    DEFAULT_BATCH,
    DEFAULT_STREAM,
    DEFAULT_TIMEOUT,
    MAX_PACKETS_PER_PUT,
    MODULE_ARGS,
)

Run = Callable[[argparse.Namespace], int]


def whole_number(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number, at least `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected a whole number from {least}, not {text!r}")
        return value

    parse.__name__ = f"whole number from {least}"
    return parse


def seconds(text: str) -> float:
    """An argparse type: seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # also NaN
        raise argparse.ArgumentTypeError(f"expected seconds, 0 or more, not {text!r}")
    return value


def number_list(least: int, example: str) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated whole numbers, each at least `least`."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(n) for n in text.split(",") if n != ""]
        except ValueError:
            values = []
        if not values or min(values) < least:
            raise argparse.ArgumentTypeError(f"expected a list like {example}, not {text!r}")
        return values

    parse.__name__ = f"list like {example}"
    return parse


rank_list = number_list(0, "0,1,2 (ranks)")
count_list = number_list(1, "1,2,4 (counts from 1)")


def add_stream(p: argparse.ArgumentParser, what: str) -> None:
    """The --stream NAME option, for a command that `what`."""
    p.add_argument(
        "--stream",
        default=DEFAULT_STREAM,
        metavar="NAME",
        help=f"the stream it {what} (default: {DEFAULT_STREAM})",
    )


def runs(module: str, function: str = "main") -> Run:
    """conduit.<module>.<function>(args), imported when the command runs."""

    def run(args: argparse.Namespace) -> int:
        command: Run = getattr(importlib.import_module(f"conduit.{module}"), function)
        return command(args)

    return run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m conduit",
        description="Stream JSON packets from Flux jobs to a datastore job.",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=bool(os.environ.get("CONDUIT_DEBUG")),
        help="show the traceback of a failure (also: CONDUIT_DEBUG=1)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ds = sub.add_parser("datastore", help="run as a Flux job: load the module, keep the store")
    ds.set_defaults(run=runs("datastore"))
    add_stream(ds, "serves; one datastore per stream")
    ds.add_argument(
        "--packets",
        type=whole_number(0),
        default=5,
        metavar="N",
        help="finish after N packets are stored (0: run until cancelled; default 5)",
    )
    ds.add_argument(
        "--fresh", action="store_true", help="discard an unfinished store instead of resuming it"
    )
    ds.add_argument(
        "--print",
        choices=output.PRINT_MODES,
        default="auto",
        help="after each packet, print the whole store, the packet, or nothing; auto: the "
        f"store while its line is at most {output.STORE_LINE_LIMIT} bytes, then packets",
    )
    ds.add_argument("--quiet", action="store_true", help="the same as --print none")
    ds.add_argument(
        "--save",
        metavar="FILE",
        help="write the store as JSON to FILE when the datastore stops (finished, "
        "cancelled or signalled), atomically",
    )
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
        help=f"an argument for the module (repeatable): {MODULE_ARGS}",
    )

    co = sub.add_parser(
        "compute", help="run as a Flux job: put one packet, wait for it to be stored, sleep"
    )
    co.set_defaults(run=runs("compute"))
    add_stream(co, "puts to")
    co.add_argument("seconds", type=seconds, help="seconds to sleep after the packet is stored")
    co.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        help="give up if no datastore stores the packet within this many seconds (default 30)",
    )

    pu = sub.add_parser(
        "put", help="put JSON objects (arguments, or JSON Lines from --file) and wait until stored"
    )
    pu.set_defaults(run=runs("put"))
    add_stream(pu, "puts to")
    pu.add_argument(
        "objects",
        nargs="*",
        metavar="JSON",
        help="a JSON object per argument; -: standard input's lines (JSON Lines)",
    )
    pu.add_argument(
        "--file", "-f", metavar="FILE", help="read one JSON object per line (JSON Lines); -: stdin"
    )
    pu.add_argument(
        "--batch",
        type=whole_number(1),
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"packets per request, at most {MAX_PACKETS_PER_PUT} (default {DEFAULT_BATCH})",
    )
    pu.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        help="give up unless every packet is stored within this many seconds (default 30)",
    )
    pu.add_argument(
        "--producer", help="the producer name for exactly-once retries (default: job id and task)"
    )

    de = sub.add_parser(
        "demo", help="inside an instance: a datastore, N computes, the attach stream"
    )
    de.set_defaults(run=runs("demo"))
    de.add_argument(
        "--computes",
        type=whole_number(1),
        metavar="N",
        help="number of computes (default 5, or one per rank if the instance has more)",
    )
    de.add_argument(
        "--datastore-rank", type=whole_number(0), metavar="RANK", help="run the datastore there"
    )
    de.add_argument(
        "--compute-ranks",
        type=rank_list,
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
        help="give up, and cancel the demo's jobs, after this many seconds (default 120)",
    )

    be = sub.add_parser(
        "bench", help="inside an instance: conduit throughput and latency against raw Flux RPC"
    )
    be.set_defaults(run=runs("bench"))
    add_stream(be, "measures")
    be.add_argument(
        "--producers",
        type=count_list,
        default=[1, 2, 4],
        metavar="P,P,...",
        help="producer counts to run (default 1,2,4)",
    )
    be.add_argument(
        "--packets",
        type=whole_number(1),
        default=2000,
        metavar="M",
        help="packets per producer (default 2000)",
    )
    be.add_argument(
        "--size",
        type=whole_number(1),
        default=64,
        metavar="S",
        help="bytes per packet (default 64)",
    )
    be.add_argument(
        "--batch",
        type=whole_number(1),
        default=64,
        metavar="B",
        help="packets per request on the batched path (default 64)",
    )
    be.add_argument(
        "--in-flight",
        type=whole_number(1),
        default=256,
        metavar="R",
        help="requests each producer keeps outstanding, on every path (default 256)",
    )
    be.add_argument(
        "--repeat",
        type=whole_number(1),
        default=3,
        help="rounds; the median run is reported (default 3)",
    )
    be.add_argument(
        "--datastore-rank",
        type=whole_number(0),
        default=0,
        metavar="RANK",
        help="rank of the datastore and of the echo (default 0)",
    )
    be.add_argument("--json", metavar="FILE", help="write the results as JSON")

    pr = sub.add_parser("produce", help="run as a Flux job by bench and the tests: pipelined puts")
    pr.set_defaults(run=runs("producer"))
    add_stream(pr, "puts to")
    pr.add_argument(
        "--topic", default="conduit.put", help="conduit.put, or an echo such as broker.ping"
    )
    pr.add_argument(
        "--rank", type=whole_number(0), help="destination rank for topics other than conduit.put"
    )
    pr.add_argument(
        "--count", type=whole_number(1), default=1000, help="packets to send (default 1000)"
    )
    pr.add_argument(
        "--size", type=whole_number(1), default=64, help="bytes per packet (default 64)"
    )
    pr.add_argument(
        "--batch",
        type=whole_number(1),
        default=1,
        help=f"packets per request, at most {MAX_PACKETS_PER_PUT} (default 1)",
    )
    pr.add_argument(
        "--in-flight", type=whole_number(1), default=64, help="requests outstanding (default 64)"
    )
    pr.add_argument(
        "--loop",
        action="store_true",
        help="a user's loop: Conduit.send per packet (--batch per request), flush at the end",
    )
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

    st = sub.add_parser(
        "store", help="print the durable store (what an unfinished datastore left in the KVS)"
    )
    st.set_defaults(run=runs("datastore", "show_store"))
    add_stream(st, "prints")

    fo = sub.add_parser(
        "follow",
        help="print each stored packet of a stream once, in order, as JSON lines, as it grows",
    )
    fo.set_defaults(run=runs("follow"))
    fo.add_argument("stream", metavar="STREAM", help=f"the stream ({DEFAULT_STREAM}: the default)")
    fo.add_argument(
        "--after",
        type=whole_number(0),
        default=0,
        metavar="ID",
        help="start with the first packet whose id is greater (the last id a consumer handled)",
    )
    fo.add_argument(
        "--wait",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a stream that does not exist yet (default 60)",
    )
    fo.add_argument(
        "--follow-on",
        action="store_true",
        help="do not end when the stream's datastore finishes: follow its next run too",
    )
    fo.add_argument("--count", type=whole_number(1), metavar="N", help="end after N packets")
    fo.add_argument(
        "--stats",
        action="store_true",
        help="at the end, print the consumer's counters as one JSON line on stderr",
    )

    ss = sub.add_parser(
        "status", help="each stream: where its datastore runs, what it stored, held, refused"
    )
    ss.set_defaults(run=runs("streams", "status"))
    ss.add_argument("--json", action="store_true", help="one JSON object, for programs")

    dl = sub.add_parser(
        "delete", help="remove a stream whose datastore is not running, and its log"
    )
    dl.set_defaults(run=runs("streams", "delete"))
    dl.add_argument("stream", metavar="STREAM", help=f"the stream ({DEFAULT_STREAM}: the default)")

    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print(f"conduit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"conduit {args.command}: {describe(exc)}", file=sys.stderr, flush=True)
        return 1


def describe(exc: Exception) -> str:
    """One line for a failure: the conduit's own message, or what Python knows of it."""
    if isinstance(exc, ConduitError):
        return str(exc)
    if isinstance(exc, ImportError) and exc.name == "flux":
        return NO_BINDINGS
    if isinstance(exc, OSError) and exc.strerror:
        what = f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    else:
        what = f"{type(exc).__name__}: {exc}"
    return f"{what} (an unexpected failure; --debug shows where)"
