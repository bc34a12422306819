"""The datastore job: receives packets through the conduit and keeps the store.

Packets arrive in batches on the conduit.attach stream.  The batches
that gather meanwhile are appended to the KVS log in one commit (group
commit), one KVS commit in flight at a time, while the next commit's
blob goes to the content store; only after a commit lands does the
datastore apply its packets to the store, print them, and acknowledge
them to the module, which then answers the puts.  So every acknowledged
packet is in the KVS, and a datastore that crashed is resumed by the
next one from there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

import flux
import flux.constants
import flux.job

from conduit import broker_module, kvsdir, output
from conduit.errors import ConduitError, connect
from conduit.protocol import DEFAULT_STREAM, check_stream, service, topic
from conduit.store import BATCH_RANGE, Packet, Store, duplicates_line, log_line


@dataclass
class Commit:
    """Batches stored in one KVS commit, and acknowledged together."""

    upto: int = -1  # highest packet id in it
    blob: bytes = b""  # its batches as one blob, once it is taken from the queue
    blobref: str | None = None  # that blob's, once it is in the content store
    logged: int = -1  # highest packet id of its batches in the log (not refused)
    lines: list[bytes] = field(default_factory=list)  # the batches as received
    fresh: list[Packet] = field(default_factory=list)  # packets new to the store
    duplicates: list[int] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)  # batches it cannot store


@dataclass
class Settings:
    stream: str  # the stream this datastore serves
    packets: int  # finish after this many are stored (0: never)
    fresh: bool  # discard an unfinished store instead of resuming it
    print_mode: str
    save: str | None  # where to write the store when the datastore stops
    module: str  # the conduit.so to load
    module_args: list[str]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(
            stream=check_stream(args.stream),
            packets=args.packets,
            fresh=args.fresh,
            print_mode="none" if args.quiet else args.print,
            save=args.save,
            module=broker_module.locate(args.module),
            module_args=args.module_arg,
        )


class Datastore:
    def __init__(self, h: flux.Flux, settings: Settings) -> None:
        self.h = h
        self.settings = settings
        self.stream = settings.stream
        self.service = service(settings.stream)  # the module's name, and its topics' prefix
        self.kvs = kvsdir.ConduitDir(h, settings.stream)
        self.printer = output.Printer(settings.print_mode)
        self.jobid = int(flux.job.JobID(os.environ.get("FLUX_JOB_ID", "0")))
        self.rank = h.get_rank()
        self.store = Store()
        self.next_commit = Commit()  # batches waiting for a commit
        self.storing: Commit | None = None  # its blob going to the content store, or there
        self.linking: Commit | None = None  # the KVS commit in flight
        self.commits = 0
        self.segment = 0  # the log segment this datastore appends to
        self.segment_commits = 0  # commits in it, and their bytes
        self.segment_bytes = 0
        self.segment_blobs: list[str] = []  # its content blobs, one a commit
        self.closes: int | None = None  # a resumed log's last segment, ended by our first commit
        self.log_last_id = -1  # the highest packet id in the log
        self.first_id = 1  # of the packets this datastore stores: ids grow along the log
        self.exit_code = 0
        self.done = False

    def run(self) -> int:
        output.say(output.STARTING)
        self.refuse_if_served()
        self.resume_or_reset()
        broker_module.load(self.h, self.settings.module, self.settings.module_args, self.service)
        output.say(output.LOADED)
        attach = self.h.rpc(
            topic(self.stream, "attach"),
            {"jobid": self.jobid, "first_id": self.first_id},
            flags=flux.constants.FLUX_RPC_STREAMING,
        )
        attach.then(self.on_batch)
        self.kvs.publish_location(self.rank, self.jobid, socket.gethostname(), self.store.count)
        output.say(output.INITIALIZED)
        output.say(output.RUNNING)
        self.printer.start()
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
            if self.settings.save:
                self.store.save(self.settings.save)
        if self.done:
            self.finish()
        else:
            broker_module.remove(self.h, self.service)
        return self.exit_code

    def refuse_if_served(self) -> None:
        """One datastore per stream: stop if the published one is alive."""
        location = self.kvs.location()
        if location is None:
            return
        try:
            stats = self.h.rpc(topic(self.stream, "stats-get"), nodeid=location["rank"]).get()
        except OSError:
            return  # no conduit there: left by a datastore that is gone
        if stats["attached"]:
            what = "the conduit" if self.stream == DEFAULT_STREAM else f"stream {self.stream}"
            raise ConduitError(
                f"datastore job {flux.job.JobID(stats['datastore']).f58} already serves "
                f"{what} on rank {stats['rank']}; cancel it first"
            )

    def resume_or_reset(self) -> None:
        """Resume an unfinished log; replace a finished one, or any with --fresh.

        Replacing a finished stream, packet ids go on from its last, so
        that a consumer following on sees the next run's packets as new;
        --fresh starts them at 1 again.
        """
        finished = self.kvs.finished()
        if finished is not None or self.settings.fresh:
            if finished is not None and not self.settings.fresh:
                self.first_id = int(finished["last_id"]) + 1
            self.kvs.discard_log()
            return
        self.store, segments = self.kvs.load_log()
        self.first_id = self.store.last_id + 1
        self.log_last_id = self.store.last_id
        if segments:
            self.segment = segments[-1] + 1
            self.closes = segments[-1]
            output.say(
                f"{output.RESUMED_PREFIX}{self.store.count} packets from an "
                f"unfinished datastore (KVS {self.kvs.log_key}); --fresh starts empty"
            )
            self.printer.resumed(self.store.render())

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
        commit = self.next_commit
        try:
            packets = json.loads(text)["packets"]
        except (ValueError, RecursionError) as exc:
            self.refuse(commit, text, exc)
        else:
            commit.upto = commit.logged = packets[-1]["id"]
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

    def refuse(self, commit: Commit, text: str, exc: Exception) -> None:
        """A batch this datastore cannot decode: not stored, its puts refused."""
        found = BATCH_RANGE.match(text)
        if not found:
            self.fail(f"cannot decode a batch from the conduit, nor its ids: {exc}")
            return
        first, last = int(found[1]), int(found[2])
        reason = str(exc)
        print(f"conduit datastore: refused packets {first}..{last}: {reason}", file=sys.stderr)
        commit.refused.append({"first": first, "last": last, "error": reason})
        commit.upto = last

    @property
    def in_flight(self) -> bool:
        """Whether a commit is on its way (its blob, or its KVS commit)."""
        return self.storing is not None or self.linking is not None

    def start_commit(self) -> None:
        """Take the waiting batches for a commit, if none is waiting for the KVS already.

        A commit has two steps: its batches go to the content store as one
        blob, then the KVS commit adds that blob to the log segment
        (kvsdir.write_segment_async).  The next commit's blob is stored
        while this one's KVS commit is in flight, so only one step of each
        waits on the other; the KVS commits themselves go one at a time,
        in order.  While they are in flight, batches gather in the next
        commit, so commits grow with load (group commit; one KVS commit at
        a time measured best, docs/performance.md).
        """
        if self.storing is not None or self.next_commit.upto < 0:
            return
        commit, self.next_commit = self.next_commit, Commit()
        self.storing = commit
        if not commit.lines:  # only refused batches: nothing to store, acknowledged in turn
            commit.blobref = ""
            self.link()
            return
        if commit.duplicates:  # named first, so that a consumer can skip them
            commit.lines.insert(0, duplicates_line(commit.duplicates))
        commit.blob = b"".join(commit.lines)
        self.kvs.store_blob_async(commit.blob).then(self.on_blob_stored, commit)

    def on_blob_stored(self, f: Any, commit: Commit) -> None:
        try:
            commit.blobref = f.blobref()
        except OSError as exc:
            self.fail(f"cannot store packets in the content store: {exc.strerror}")
            return
        self.link()

    def link(self) -> None:
        """Commit the stored blob to the log, once the KVS commit before it has landed."""
        commit = self.storing
        if self.linking is not None or commit is None or commit.blobref is None or self.done:
            return
        self.storing = None
        if not commit.lines:
            self.acknowledge(commit)
            self.stored(commit)
            self.start_commit()
            return
        self.linking = commit
        if (
            self.segment_commits >= kvsdir.SEGMENT_COMMITS
            or self.segment_bytes >= kvsdir.SEGMENT_BYTES
        ):
            self.closes = self.segment
            self.segment += 1
            self.segment_commits = self.segment_bytes = 0
            self.segment_blobs = []
        self.segment_commits += 1
        self.segment_bytes += len(commit.blob)
        self.commits += 1
        self.segment_blobs.append(commit.blobref)
        commit.blob = b""
        closes, self.closes = self.closes, None
        self.kvs.write_segment_async(self.segment, self.segment_blobs, closes).then(
            self.on_committed, commit
        )
        self.start_commit()  # the next one's blob goes to the content store meanwhile

    def on_committed(self, f: Any, commit: Commit) -> None:
        try:
            f.get()
        except OSError as exc:
            self.fail(f"cannot store packets in the KVS: {exc.strerror}")
            return
        self.linking = None
        self.log_last_id = max(self.log_last_id, commit.logged)
        # Acknowledge, and start the next commit, before applying this one:
        # the KVS and the producers then work while the store grows
        # (docs/performance.md).  Not past the target, though.
        target = self.settings.packets
        last = 0 < target <= self.store.count + len(commit.fresh)
        self.acknowledge(commit)
        if not last:
            self.advance()
        self.stored(commit)
        if self.done:
            self.h.reactor_stop()
        elif last:
            self.advance()

    def advance(self) -> None:
        """The KVS commit is free: link the blob stored meanwhile, take the next batches."""
        self.link()
        self.start_commit()

    def acknowledge(self, commit: Commit) -> None:
        ack: dict[str, Any] = {"upto": commit.upto, "duplicates": commit.duplicates}
        if commit.refused:
            ack["refused"] = commit.refused
        self.h.rpc(topic(self.stream, "ack"), ack, flags=flux.constants.FLUX_RPC_NORESPONSE)

    # Packets stored: show them.
    def stored(self, commit: Commit) -> None:
        if self.printer.mode == "none":
            for packet in commit.fresh:
                self.store.apply(packet)
        else:
            for packet in commit.fresh:
                self.store.apply(packet)
                more = not self.reached_target()
                self.printer.stored(self.store.render, json.dumps(packet["data"]), more)
        if self.reached_target():
            self.done = True

    def reached_target(self) -> bool:
        return 0 < self.settings.packets <= self.store.count

    def finish(self) -> None:
        output.say(output.BYE)
        broker_module.remove(self.h, self.service)
        self.kvs.finish(self.jobid, self.store.count, self.log_last_id)
        if self.settings.print_mode == "none":
            summary = {"stored": self.store.count, "keys": len(self.store.data)}
            output.say(output.SUMMARY_PREFIX + json.dumps({**summary, "commits": self.commits}))
        output.say(output.FINISHED)

    def fail(self, message: str) -> None:
        print(f"conduit datastore: {message}", file=sys.stderr, flush=True)
        self.exit_code = 1
        self.h.reactor_stop()

    def on_signal(self, h: flux.Flux, watcher: Any, signum: int, *_: Any) -> None:
        output.say(
            f"Stopped by signal {signum}: {self.store.count} packets stay in KVS "
            f"{self.kvs.log_key} for the next datastore"
        )
        self.exit_code = 128 + signum
        h.reactor_stop()


def main(args: argparse.Namespace) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    return Datastore(connect(), Settings.from_args(args)).run()


def show_store(args: argparse.Namespace) -> int:
    """Print a stream's durable store in the KVS as one JSON line."""
    store, segments = kvsdir.ConduitDir(connect(), check_stream(args.stream)).load_log()
    print(json.dumps({"packets": store.count, "segments": len(segments), "store": store.data}))
    return 0
