"""The datastore job: receives packets through the conduit and keeps the store.

Packets arrive in batches on the conduit.attach stream.  Each batch is
appended to the KVS log (conduit.store) in one commit, with at most one
commit in flight; only after a commit lands does the datastore apply the
packets to the store, print it, and acknowledge them to the module, which
then answers the computes' puts.  So every acknowledged packet is in the
KVS, and a datastore that crashed is resumed by the next one from there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

import flux
import flux.constants
import flux.job
import flux.kvs

from conduit import broker_module, kvsdir, output
from conduit.protocol import (
    ACK,
    ATTACH,
    KVS_COMPUTES,
    KVS_LOCATION,
    KVS_NAMESPACE,
    KVS_STORE,
    SEGMENT_COMMITS,
    STATS,
)
from conduit.store import Packet, Store, log_line

# The module writes each batch's id range first, so a batch that cannot be
# decoded can still be refused by its ids.
BATCH_HEADER = re.compile(r'\{"first":(\d+),"last":(\d+),')


@dataclass
class Commit:
    """Batches stored in one KVS commit, and acknowledged together."""

    upto: int = -1  # highest packet id in it
    lines: list[bytes] = field(default_factory=list)  # the batches as received
    fresh: list[Packet] = field(default_factory=list)  # packets new to the store
    duplicates: list[int] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)  # {"first", "last", "error"}


class Datastore:
    def __init__(
        self,
        h: flux.Flux,
        packets: int,
        fresh: bool = False,
        quiet: bool = False,
        module: str | None = None,
        module_args: list[str] | None = None,
    ) -> None:
        self.h = h
        self.packets = packets
        self.fresh = fresh
        self.quiet = quiet
        self.module_path = broker_module.locate(module)
        self.module_args = module_args or []
        self.jobid = int(flux.job.JobID(os.environ.get("FLUX_JOB_ID", "0")))
        self.rank = h.get_rank()
        self.store = Store()
        self.next_commit = Commit()  # batches waiting for the commit in flight
        self.in_flight: Commit | None = None
        self.attach: Any = None
        self.commits = 0
        self.segment = 0  # the log segment this datastore starts appending to
        self.exit_code = 0
        self.done = False

    def say(self, line: str) -> None:
        print(line, flush=True)

    def run(self) -> int:
        self.say(output.STARTING)
        self.refuse_if_served()
        self.resume_or_reset()
        broker_module.load(self.h, self.module_path, self.module_args)
        self.say(output.LOADED)
        self.attach = self.h.rpc(
            ATTACH, {"jobid": self.jobid}, flags=flux.constants.FLUX_RPC_STREAMING
        ).then(self.on_batch)
        self.publish_location()
        self.say(output.INITIALIZED)
        self.say(output.RUNNING)
        if not self.quiet:
            self.say(output.WAITING)
        watchers = [
            self.h.signal_watcher_create(signum, self.on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        ]
        for watcher in watchers:
            watcher.start()
        try:
            self.h.reactor_run()
        finally:
            for watcher in watchers:
                watcher.stop()
        if self.done:
            self.finish()
        else:
            broker_module.remove(self.h)
        return self.exit_code

    def refuse_if_served(self) -> None:
        """One datastore per instance: stop if the published one is alive."""
        location = kvsdir.location(self.h)
        if location is None:
            return
        try:
            stats = self.h.rpc(STATS, nodeid=location["rank"]).get()
        except OSError:
            return  # no conduit there: left by a datastore that is gone
        if stats["attached"]:
            raise broker_module.ModuleError(
                f"datastore job {flux.job.JobID(stats['datastore']).f58} already serves "
                f"the conduit on rank {stats['rank']}; cancel it first"
            )

    def resume_or_reset(self) -> None:
        txn = flux.kvs.KVSTxn(self.h, namespace=KVS_NAMESPACE)
        if self.fresh:
            txn.unlink(KVS_STORE)
            txn.commit()
            return
        self.store, segments = kvsdir.load_store(self.h)
        if segments:
            self.segment = int(segments[-1].rsplit(".", 1)[1]) + 1
            self.say(
                f"{output.RESUMED_PREFIX}{self.store.count} packets from an "
                f"unfinished datastore (KVS {KVS_STORE}); --fresh starts empty"
            )
            if not self.quiet:
                self.say(self.store.render())

    def publish_location(self) -> None:
        location = {"rank": self.rank, "jobid": self.jobid, "host": socket.gethostname()}
        with flux.kvs.KVSTxn(self.h, namespace=KVS_NAMESPACE) as txn:
            txn.put(KVS_LOCATION, location)

    # Packets in: each batch joins the next commit.
    def on_batch(self, f: Any) -> None:
        try:
            text = f.get_str()
        except OSError as exc:
            self.fail(f"the conduit closed the packet stream: {exc.strerror}")
            return
        f.reset()
        if self.done:
            return  # past the target: left unacknowledged, these fail at unload
        try:
            packets = json.loads(text)["packets"]
        except (ValueError, RecursionError) as exc:
            self.refuse(text, exc)
            return
        commit = self.next_commit
        commit.upto = packets[-1]["id"]
        commit.lines.append(log_line(text))
        for packet in packets:
            if self.store.claim(packet):
                commit.fresh.append(packet)
            else:
                commit.duplicates.append(packet["id"])
                print(
                    f"duplicate ignored: {packet['producer']} #{packet['seq']}",
                    file=sys.stderr,
                    flush=True,
                )
        self.start_commit()

    def refuse(self, text: str, reason: Exception) -> None:
        """Refuse a batch that cannot be decoded: not logged, its puts get an error."""
        header = BATCH_HEADER.match(text)
        if header is None:
            self.fail(f"a batch without its id range cannot be refused: {reason}")
            return
        first, last = int(header[1]), int(header[2])
        print(
            f"conduit datastore: refused packets {first}..{last}: {reason}",
            file=sys.stderr,
            flush=True,
        )
        commit = self.next_commit
        commit.upto = last
        commit.refused.append({"first": first, "last": last, "error": str(reason)})
        self.start_commit()

    def start_commit(self) -> None:
        """Append the waiting batches to the log in one commit, if none is in flight.

        While a commit is in flight, batches gather in the next one, so
        commits grow with load (group commit).  One at a time measured
        best: the KVS spends about the same per commit whatever its size
        (docs/performance.md).
        """
        if self.in_flight or not (self.next_commit.lines or self.next_commit.refused):
            return
        commit, self.next_commit = self.next_commit, Commit()
        if not commit.lines:  # only refused batches: nothing to commit
            self.stored(commit)
            return
        self.in_flight = commit
        blob = b"".join(commit.lines)
        txn = flux.kvs.KVSTxn(self.h, namespace=KVS_NAMESPACE)
        key = f"{KVS_STORE}.{self.segment + self.commits // SEGMENT_COMMITS}"
        flux.kvs.RAW.flux_kvs_txn_put_raw(
            txn.txn, flux.constants.FLUX_KVS_APPEND, key, blob, len(blob)
        )
        self.commits += 1
        txn.commit_async().then(self.on_committed, commit)

    def on_committed(self, f: Any, commit: Commit) -> None:
        try:
            f.get()
        except OSError as exc:
            self.fail(f"cannot store packets in the KVS: {exc.strerror}")
            return
        self.in_flight = None
        self.stored(commit)
        if self.done:
            self.h.reactor_stop()
        else:
            self.start_commit()

    # Packets stored: show and acknowledge them.
    def stored(self, commit: Commit) -> None:
        for packet in commit.fresh:
            self.store.apply(packet)
            if not self.quiet:
                self.say(self.store.render())
                if not self.reached_target():
                    self.say(output.WAITING)
        self.h.rpc(
            ACK,
            {"upto": commit.upto, "duplicates": commit.duplicates, "refused": commit.refused},
            flags=flux.constants.FLUX_RPC_NORESPONSE,
        )
        if self.reached_target():
            self.done = True

    def reached_target(self) -> bool:
        return 0 < self.packets <= self.store.count

    def finish(self) -> None:
        self.say(output.BYE)
        broker_module.remove(self.h)
        txn = flux.kvs.KVSTxn(self.h, namespace=KVS_NAMESPACE)
        txn.unlink(KVS_STORE)
        txn.unlink(KVS_COMPUTES)  # the finished run's check-ins
        if self.location_is_mine():
            txn.unlink(KVS_LOCATION)
        txn.commit()
        if self.quiet:
            summary = {"stored": self.store.count, "keys": len(self.store.data)}
            self.say(json.dumps({**summary, "commits": self.commits}))
        self.say(output.FINISHED)

    def location_is_mine(self) -> bool:
        location = kvsdir.location(self.h)
        return location is not None and location.get("jobid") == self.jobid

    def fail(self, message: str) -> None:
        print(f"conduit datastore: {message}", file=sys.stderr, flush=True)
        self.exit_code = 1
        self.h.reactor_stop()

    def on_signal(self, h: flux.Flux, watcher: Any, signum: int, *_: Any) -> None:
        self.say(
            f"Stopped by signal {signum}: {self.store.count} packets stay in KVS "
            f"{KVS_STORE} for the next datastore"
        )
        self.exit_code = 128 + signum
        h.reactor_stop()


def show_store() -> int:
    """Print the durable store in the KVS as one JSON line."""
    store, segments = kvsdir.load_store(flux.Flux())
    print(json.dumps({"packets": store.count, "segments": len(segments), "store": store.data}))
    return 0


def main(packets: int, fresh: bool, quiet: bool, module: str | None, module_args: list[str]) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    h = flux.Flux()
    try:
        return Datastore(h, packets, fresh, quiet, module, module_args).run()
    except broker_module.ModuleError as exc:
        print(f"conduit datastore: {exc}", file=sys.stderr, flush=True)
        return 1
