"""The datastore's own limit: packets/s it decodes, commits and applies, alone.

    flux python -m conduit.datastore_limit [--packets N] [--batch B] [--size S] [--group G]

Runs the datastore's own code (conduit.datastore.Datastore: decode and
claim each batch, group commit to the KVS log with one commit in flight,
apply) on batches written as the module writes them, fed G batches per
commit, with no module, no producers and no network in the way.  Prints
one JSON line: packets/s by the clock, and by the datastore process's
own CPU time (what one core of it can do).  It writes a stream of its
own (conduit.streams.limit-<pid>) and deletes it at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import time
from collections.abc import Iterator
from typing import Any

from conduit import kvsdir
from conduit.datastore import Datastore, Settings
from conduit.errors import connect


def batches(count: int, batch: int, size: int) -> Iterator[str]:
    """`count` packets as batch texts of the module's format, numbered from 1."""
    producer = "limit-0"
    fill = "x" * max(size - len(producer) - 16, 0)
    for first in range(1, count + 1, batch):
        last = min(first + batch - 1, count)
        packets = ",".join(
            f'{{"id":{i},"producer":"{producer}","seq":{i},"data":{{"{producer}-{i}":"{fill}"}}}}'
            for i in range(first, last + 1)
        )
        yield f'{{"first":{first},"last":{last},"packets":[{packets}]}}'


class Text:
    """What on_batch reads of an attach response: its text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def get_str(self) -> str:
        return self.text

    def reset(self) -> None:
        pass


class Replay(Datastore):
    """The datastore, fed `group` batches each time a commit lands."""

    def __init__(self, texts: Iterator[str], group: int, **settings: Any) -> None:
        h = connect()
        super().__init__(h, Settings(**settings))
        self.texts = texts
        self.group = group
        self.left = True

    def feed(self) -> None:
        fed = 0
        for text in itertools.islice(self.texts, self.group):
            self.on_batch(Text(text))
            fed += 1
        self.left = fed == self.group

    def on_committed(self, f: Any, commit: Any) -> None:
        if self.left:
            self.feed()  # they join the next commit, which the datastore starts now
        super().on_committed(f, commit)
        if not self.in_flight and self.next_commit.upto < 0:
            self.h.reactor_stop()


def main() -> int:
    p = argparse.ArgumentParser(prog="flux python -m conduit.datastore_limit")
    p.add_argument("--packets", type=int, default=128_000)
    p.add_argument("--batch", type=int, default=64, help="packets per batch (default 64)")
    p.add_argument("--size", type=int, default=64, help="bytes of data per packet (default 64)")
    p.add_argument("--group", type=int, default=48, help="batches per commit (default 48)")
    args = p.parse_args()
    stream = f"limit-{os.getpid()}"
    replay = Replay(
        batches(args.packets, args.batch, args.size),
        args.group,
        stream=stream,
        packets=0,
        fresh=True,
        print_mode="none",
        save=None,
        module="",
        module_args=[],
    )
    replay.kvs.discard_log()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    replay.feed()
    replay.h.reactor_run()
    seconds = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    stored = replay.store.count
    kvsdir.ConduitDir(replay.h, stream).delete()
    print(
        json.dumps(
            {
                "packets": stored,
                "commits": replay.commits,
                "seconds": round(seconds, 3),
                "per_second": round(stored / seconds),
                "cpu_seconds": round(cpu, 3),
                "per_cpu_second": round(stored / cpu),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
