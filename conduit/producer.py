"""A producer job for the benchmark and the reliability tests.

Sends `count` packets of `size` bytes to a topic (conduit.put, or an echo
such as broker.ping for the raw baseline), `batch` packets per request
(conduit.put only) and `in_flight` requests at once, and prints one JSON
line: what was acknowledged, when, and each packet's latency from send
to acknowledgement.  With --loop, it is a user's loop instead: one
Conduit.send per packet (`batch` per request), then flush.

With --retry-for, a request that fails with an error a datastore restart
clears is sent again (same producer and seqs) to wherever the datastore
now is, until that many seconds have passed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import flux

from conduit import kvsdir
from conduit.client import Conduit, job_name
from conduit.errors import ConduitError, connect
from conduit.protocol import PUT, RETRYABLE_ERRNOS, topic


def packet_object(producer: str, seq: int, size: int) -> dict[str, str]:
    """A JSON object of `size` bytes as compact JSON text (at least its key's length).

    For a producer name that JSON needs not escape (job ids and host
    names), as payload_text() assumes: the loop path's user has her data
    at hand, so it is made as cheaply as the batched path's text.
    """
    key = f"{producer}-{seq}"
    return {key: "x" * max(size - len(key) - 7, 0)}  # 7: the characters of {"":""}


def packet_data(producer: str, seq: int, size: int) -> str:
    """A JSON object's text of `size` bytes (at least its key's length), for any name."""
    key = f"{producer}-{seq}"
    head = json.dumps({key: ""})
    return json.dumps({key: "x" * max(size - len(head), 0)})


def payload_text(producer: str, seq: int, size: int) -> str:
    """json.dumps({"data": packet_data(...), "producer", "seq"}), written as text.

    For a producer name that JSON needs not escape (job ids and host
    names): encoding each packet twice cost the bench's producers more
    CPU than the module and the datastore together (docs/performance.md).
    """
    key = f"{producer}-{seq}"
    fill = "x" * max(size - len(key) - 8, 0)  # 8: the characters of {"": ""}
    return f'{{"data": "{{\\"{key}\\": \\"{fill}\\"}}", "producer": "{producer}", "seq": {seq}}}'


@dataclass
class Load:
    """What a producer sends, and how."""

    topic: str  # the stream's put topic, or an echo
    stream: str
    rank: int | None  # destination for topics other than conduit.put
    count: int
    size: int
    batch: int  # packets per request (conduit.put)
    in_flight: int  # requests outstanding at once
    retry_for: float  # seconds to resend retryable failures (0: never)
    loop: bool = False  # Conduit.send per packet, then flush

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Load:
        if args.topic != PUT and args.rank is None:
            raise ConduitError(f"--topic {args.topic} needs --rank")
        if args.topic != PUT and (args.batch != 1 or args.loop):
            raise ConduitError("--batch and --loop are for --topic conduit.put only")
        put = topic(args.stream, "put") if args.topic == PUT else args.topic
        return cls(
            put,
            args.stream,
            args.rank,
            args.count,
            args.size,
            args.batch,
            args.in_flight,
            args.retry_for,
            args.loop,
        )


class Producer:
    def __init__(self, h: flux.Flux, load: Load) -> None:
        self.h = h
        self.load = load
        self.name = job_name()
        self.kvs = kvsdir.ConduitDir(h, load.stream)
        self.put = topic(load.stream, "put")
        self.next_seq = 1
        self.acked = 0
        self.duplicates = 0
        self.retries = 0
        self.errors: dict[str, int] = {}
        self.latency = [0.0] * load.count
        self.sent_at = [0.0] * load.count
        self.retry_queue: list[range] = []
        self.deadline = 0.0
        self.settled = 0  # packets acknowledged or failed for good
        self.nodeid = 0
        self.plain = json.dumps(self.name) == f'"{self.name}"'  # payload_text() can write it

    def destination(self) -> int:
        """conduit.put goes where the KVS says the datastore is; others to the rank given."""
        if self.load.topic != self.put:
            assert self.load.rank is not None
            return self.load.rank
        location = self.kvs.location()
        if location is None:
            raise ConduitError("no datastore has published its location in the KVS")
        return int(location["rank"])

    def payload(self, seq: int) -> str:
        if self.plain:
            return payload_text(self.name, seq, self.load.size)
        data = packet_data(self.name, seq, self.load.size)
        return json.dumps({"data": data, "producer": self.name, "seq": seq})

    def send_next(self) -> None:
        """The next request: up to `batch` packets not sent before."""
        if self.next_seq > self.load.count:
            return
        seqs = range(self.next_seq, min(self.next_seq + self.load.batch, self.load.count + 1))
        self.next_seq = seqs.stop
        self.send(seqs)

    def send(self, seqs: range) -> None:
        if not self.sent_at[seqs[0] - 1]:  # a request is resent whole, or not at all
            self.sent_at[seqs[0] - 1 : seqs.stop - 1] = [time.perf_counter()] * len(seqs)
        if len(seqs) == 1:
            payload = self.payload(seqs[0])
        else:
            payload = '{"packets": [' + ", ".join(self.payload(seq) for seq in seqs) + "]}"
        self.h.rpc(self.load.topic, payload, nodeid=self.nodeid).then(self.on_response, seqs)

    def on_response(self, f: Any, seqs: range) -> None:
        try:
            response = f.get_str()
        except OSError as exc:
            if self.load.retry_for > 0 and exc.errno in RETRYABLE_ERRNOS:
                self.retries += 1
                self.retry_queue.append(seqs)
                return
            key = exc.strerror or str(exc.errno)
            self.errors[key] = self.errors.get(key, 0) + len(seqs)
        else:
            latency = time.perf_counter() - self.sent_at[seqs[0] - 1]
            self.acked += len(seqs)
            if self.load.topic == self.put:  # the module writes its answers without spaces
                self.duplicates += response.count('"duplicate":true')
            self.latency[seqs[0] - 1 : seqs.stop - 1] = [latency] * len(seqs)
        self.settled += len(seqs)
        self.send_next()
        if self.settled == self.load.count:
            self.h.reactor_stop()

    def on_retry_timer(self, *_: Any) -> None:
        if not self.retry_queue:
            return
        if time.monotonic() > self.deadline:
            self.h.reactor_stop()
            return
        try:
            self.nodeid = self.destination()
        except ConduitError:
            return
        queued, self.retry_queue = self.retry_queue, []
        for seqs in queued:
            self.send(seqs)

    def prepare(self) -> None:
        """What may be done before the start: where to send."""
        self.nodeid = self.destination()

    def run(self) -> dict[str, Any]:
        self.deadline = time.monotonic() + self.load.retry_for
        timer = None
        if self.load.retry_for > 0:
            timer = self.h.timer_watcher_create(0.2, self.on_retry_timer, repeat=0.2)
            timer.start()
        start = time.time()
        for _ in range(self.load.in_flight):
            self.send_next()
        self.h.reactor_run()
        end = time.time()
        if timer:
            timer.stop()
        return {
            "producer": self.name,
            "topic": self.load.topic,
            "rank": self.h.get_rank(),
            "count": self.load.count,
            "batch": self.load.batch,
            "acked": self.acked,
            "duplicates": self.duplicates,
            "retries": self.retries,
            "unacked": self.load.count - self.acked - sum(self.errors.values()),
            "errors": self.errors,
            "start": start,
            "end": end,
            "latency_us": [round(x * 1e6) for x in self.latency if x],
        }


class LoopProducer:
    """The loop a user writes: Conduit.send for each packet, flush at the end."""

    def __init__(self, h: flux.Flux, load: Load) -> None:
        self.h = h
        self.load = load
        self.name = job_name()
        self.conduit: Conduit | None = None

    def prepare(self) -> None:
        """What a user's job does before its loop: make the client (it finds the datastore)."""
        load = self.load
        self.conduit = Conduit(
            self.h,
            producer=self.name,
            timeout=max(load.retry_for, 30.0),
            stream=load.stream,
            batch=load.batch,
        )

    def run(self) -> dict[str, Any]:
        conduit, load, name = self.conduit, self.load, self.name
        assert conduit is not None
        size, count = load.size, load.count
        start = time.time()
        futures = [conduit.send(packet_object(name, i, size)) for i in range(1, count + 1)]
        with contextlib.suppress(ConduitError):  # each failure is counted below
            conduit.flush()
        end = time.time()
        conduit.close()
        stats = conduit.send_stats
        errors: dict[str, int] = {}
        latency = []
        for future in futures:  # what a run needs of each, without a Receipt apiece
            exc = future.exception()
            if exc is None:
                latency.append(round((future.settled_at - future.sent_at) * 1e6))
            else:
                key = os.strerror(exc.errno or errno.EIO)
                errors[key] = errors.get(key, 0) + 1
        return {
            "producer": name, "topic": load.topic, "rank": self.h.get_rank(),
            "count": load.count, "batch": load.batch, "acked": len(latency),
            "duplicates": stats.duplicates, "retries": stats.retries, "unacked": 0,
            "errors": errors, "start": start, "end": end, "latency_us": latency,
        }  # fmt: skip


def main(args: argparse.Namespace) -> int:
    load = Load.from_args(args)
    h = connect()
    producer = LoopProducer(h, load) if load.loop else Producer(h, load)
    producer.prepare()  # before the start, so that every producer starts sending at once
    if args.start_at:
        time.sleep(max(args.start_at - time.time(), 0))
    report = producer.run()
    print(json.dumps(report), flush=True)
    return 0 if report["acked"] == load.count else 1
