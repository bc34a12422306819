"""A consumer: each stored packet of a stream, once, in order, as the stream grows.

    from conduit.follow import Follower

    for packet in Follower(stream="metrics", after=last_id_handled):
        handle(packet["id"], packet["data"])

It reads the stream's log in the KVS (conduit/kvsdir.py), one segment at
a time, with a KVS watch rather than polling: each commit's bytes as it
lands, loaded raw from the content store (kvsdir.SegmentWatch).  A
segment that is not the last ends with a line naming the next, written
in the same commit as the next segment's first batch (also by a
datastore that resumes a log), so the consumer moves on without reading
anything twice.  Packet ids grow along the log, so `after` (the last id
a consumer handled) is a resume point; a commit names its repeated
packets (retried puts) first, so they are skipped without remembering
every packet.  What it holds at once is bounded by one segment
(SEGMENT_BYTES, passed by at most one commit), however long the stream.

It ends when the stream's datastore has finished (its finished mark
names the log's last id) and it has read up to that id, or, with
follow_on, goes on with the stream's next run.  It never sends to
the datastore or the module, so a slow consumer slows nobody.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import resource
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import flux
import flux.constants

from conduit import kvsdir
from conduit.errors import ConduitError, connect
from conduit.jsontext import c_encoder
from conduit.protocol import DEFAULT_STREAM, check_stream
from conduit.store import BATCH_RANGE, TEST_ID

Packet = dict[str, Any]
ONCE = flux.constants.FLUX_REACTOR_ONCE
LINE_RANGE = re.compile(BATCH_RANGE.pattern.encode())


class Follower:
    """The stored packets of one stream, as an iterator of {"id", "data"}.

    Args:
        h: a Flux handle (default: a new one on the enclosing instance).
        stream: the stream to follow.
        after: start with the first packet whose id is greater.
        wait: seconds to wait for a stream that does not exist yet.
        follow_on: go on with the stream's next run when its datastore finishes.

    Raises (while iterating):
        ConduitError: the stream did not appear within `wait`, was deleted
            while followed, or its log cannot be read (or is an older
            conduit's).
    """

    def __init__(
        self,
        h: flux.Flux | None = None,
        stream: str = DEFAULT_STREAM,
        after: int = 0,
        wait: float = 60.0,
        follow_on: bool = False,
    ) -> None:
        self.h = h or connect()
        self.stream = check_stream(stream)
        self.kvs = kvsdir.ConduitDir(self.h, stream)
        self.after = after  # the id of the last packet read from the log (queued or skipped)
        self.last_id = after  # the id of the last packet yielded: where a restart goes on
        self.wait = wait
        self.follow_on = follow_on
        self.segment = 0  # the segment being read
        self.partial = b""  # the start of a line whose end has not come yet
        self.lines: deque[bytes] = deque()  # complete lines not yet parsed
        self.ready: deque[Packet] = deque()  # packets of one line, not yet yielded
        self.skip: set[int] = set()  # ids the current commit names as repeats
        self.finished_jobid: int | None = None  # the run whose end was read
        self.end: dict[str, Any] | None = None  # the finished mark, until read up to it
        self.log_id = -1  # the highest packet id read from the log, repeats included
        self.seen_stream = False
        self.ended = False
        self.error: ConduitError | None = None
        self.segment_watch: kvsdir.SegmentWatch | None = None
        self.location_watch: Any = None  # for the next run, with follow_on
        self.finished_watch: Any = None
        # counters
        self.packets = 0
        self.segments = 0
        self.peak_buffer_bytes = 0
        self.first_at = 0.0
        self.last_at = 0.0

    def __iter__(self) -> Iterator[Packet]:
        self.kvs.segment_dirs()  # an older conduit's log is refused now, not waited for
        self._read_segment(0)
        self._watch_finished()
        timer = self.h.timer_watcher_create(self.wait, self._on_wait_timeout)
        timer.start()
        try:
            while True:
                if self.ready:
                    packet = self.ready.popleft()
                    self.last_id = packet["id"]
                    self.packets += 1
                    self.last_at = time.time()
                    if self.packets == 1:
                        self.first_at = self.last_at
                    yield packet
                elif self.lines:
                    self._parse(self.lines.popleft())
                elif self.error:
                    raise self.error
                elif self.ended:
                    return
                else:
                    self._check_end()
                    if not self.ended and self.h.reactor_run(flags=ONCE) < 0:
                        raise ConduitError(
                            f"stream {self.stream}: lost the connection to the Flux "
                            "instance (did it end?)"
                        )
        finally:
            timer.stop()
            self._stop_watches()

    def buffered(self) -> int:
        """Packets and lines read from the KVS and not yet yielded (0: the next waits)."""
        return len(self.ready) + len(self.lines)

    def counters(self) -> dict[str, Any]:
        """What it has done, and the most it held at once."""
        return {
            "stream": self.stream,
            "packets": self.packets,
            "last_id": self.last_id,
            "segments": self.segments,
            "peak_buffer_bytes": self.peak_buffer_bytes,
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }

    # The log, a segment at a time.
    def _read_segment(self, n: int) -> None:
        """Read segment n: all of it so far, then each commit's bytes as it lands."""
        self._stop_watches(keep_finished=True)
        self.segment, self.partial = n, b""
        self.segments += 1
        self.segment_watch = self.kvs.watch_segment(n, self._on_data, self._lost)

    def _on_data(self, data: bytes) -> None:
        self.seen_stream = True
        self._feed(data)

    # The end of a run.
    def _watch_finished(self) -> None:
        finished = self.kvs.watch_finished()
        finished.then(self._on_finished)
        self.finished_watch = finished

    def _on_finished(self, f: Any) -> None:
        try:
            mark = f.get()
        except FileNotFoundError:
            # Unlinked (a datastore starting afresh, or the next run
            # replacing the stream): not finished, so watch again.
            f.needs_cancel = False  # this watch has ended
            self._watch_finished()
            return
        except OSError as exc:
            self._lost(exc)
            return
        if isinstance(mark, dict) and mark.get("jobid") != self.finished_jobid:
            self.seen_stream = True
            self.end = mark  # ends once the log is read up to its last id

    def _check_end(self) -> None:
        """Past the finished run's last packet: end, or wait for the next run."""
        if self.end is None or self.log_id < self.end["last_id"]:
            return
        self.finished_jobid, self.end = self.end["jobid"], None
        if self.follow_on:
            self._await_next_run()
        else:
            self.ended = True
            self._stop_watches()

    def _await_next_run(self) -> None:
        """After a finished run: the next one starts its log again from segment 0."""
        self._stop_watches(keep_finished=True)
        self.log_id = -1
        self.location_watch = self.kvs.watch_location()
        self.location_watch.then(self._on_next_run)

    def _on_next_run(self, f: Any) -> None:
        try:
            where = f.get()
        except OSError as exc:
            self._lost(exc)
            return
        if isinstance(where, dict) and where.get("jobid") != self.finished_jobid:
            self._read_segment(0)

    # Lines and packets.
    def _feed(self, data: bytes) -> None:
        if not data:
            return
        *complete, self.partial = (self.partial + data).split(b"\n")
        self.lines.extend(line for line in complete if line)
        held = len(self.partial) + sum(len(line) for line in self.lines)
        self.peak_buffer_bytes = max(self.peak_buffer_bytes, held)

    def _parse(self, line: bytes) -> None:
        read = LINE_RANGE.match(line)
        if read and int(read[2]) <= self.after:  # a batch read already (before `after`)
            last = int(read[2])
            self.log_id = max(self.log_id, last)
            if self.skip:
                self.skip = {pid for pid in self.skip if pid > last}
            return
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ConduitError(
                f"stream {self.stream}: a line of segment {self.segment} of KVS "
                f"{self.kvs.log_key} is not JSON ({exc})"
            ) from None
        if "duplicates" in record:
            self.skip.update(record["duplicates"])
            return
        if "next" in record:  # the end of this segment
            self._read_segment(int(record["next"]))
            return
        packets = record["packets"]
        if packets and not self.skip and packets[0]["id"] > max(self.after, TEST_ID):
            # all of them new, since ids grow along the log: the common case, in one pass
            self.ready.extend([{"id": p["id"], "data": p["data"]} for p in packets])
            self.after = packets[-1]["id"]
            self.log_id = max(self.log_id, self.after)
            return
        for packet in packets:
            pid = packet["id"]
            self.log_id = max(self.log_id, pid)
            if pid == TEST_ID:
                continue
            if pid in self.skip:
                self.skip.discard(pid)
                continue
            if pid <= self.after:
                continue
            self.after = pid
            self.ready.append({"id": pid, "data": packet["data"]})

    def _on_wait_timeout(self, *_: Any) -> None:
        if not self.seen_stream and self.kvs.location() is None:
            self.error = ConduitError(
                f"stream {self.stream} does not exist: no datastore served it within "
                f"{self.wait:g}s; start one: flux submit -N1 -n1 flux python -m conduit "
                f"datastore --stream {self.stream}"
            )

    def _lost(self, exc: OSError) -> None:
        if exc.errno in (errno.ENOENT, errno.EINVAL):  # removed, or overwritten
            why = "its log was deleted or replaced while it was read"
        else:
            why = f"cannot read its log: {exc.strerror or exc}"
        self.error = ConduitError(f"stream {self.stream}: {why}", exc.errno)

    def _stop_watches(self, keep_finished: bool = False) -> None:
        if self.segment_watch is not None:
            self.segment_watch.stop()
            self.segment_watch = None
        if self.location_watch is not None:
            kvsdir.end_watch(self.location_watch)
            self.location_watch = None
        if self.finished_watch is not None and not keep_finished:
            kvsdir.end_watch(self.finished_watch)
            self.finished_watch = None


def main(args: argparse.Namespace) -> int:
    """`conduit follow STREAM`: one JSON line per packet on stdout."""
    follower = Follower(
        stream=args.stream, after=args.after, wait=args.wait, follow_on=args.follow_on
    )
    out = sys.stdout
    encode = c_encoder(", ", ": ", allow_nan=True)  # json.dumps's text, without its cost a call
    try:
        for packet in follower:
            out.write(("".join(encode(packet, 0)) if encode else json.dumps(packet)) + "\n")
            if follower.buffered() == 0:
                out.flush()  # before waiting for more
            if args.count and follower.packets >= args.count:
                break
        out.flush()
    finally:
        if args.stats:
            print(json.dumps(follower.counters()), file=sys.stderr, flush=True)
    return 0
