"""A producer job for the benchmark and the reliability tests.

Sends `count` packets of `size` bytes to a topic (conduit.put, or an echo
such as broker.ping for the raw baseline), keeping `window` requests in
flight, and prints one JSON line: what was acknowledged, when, and each
packet's latency from send to acknowledgement.

With --retry-for, a packet that fails with an error a datastore restart
clears is sent again (same producer and seq) to wherever the datastore
now is, until that many seconds have passed.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import flux
import flux.job

from conduit import kvsdir
from conduit.compute import job_name
from conduit.protocol import PUT, RETRYABLE_ERRNOS


def packet_data(producer: str, seq: int, size: int) -> str:
    """A JSON object string of `size` bytes (at least its key's length)."""
    head = json.dumps({f"{producer}-{seq}": ""})
    return json.dumps({f"{producer}-{seq}": "x" * max(size - len(head), 0)})


@dataclass
class Load:
    """What a producer sends, and how."""

    topic: str
    rank: int | None  # destination for topics other than conduit.put
    count: int
    size: int
    window: int  # requests in flight
    retry_for: float  # seconds to resend retryable failures (0: never)


class Producer:
    def __init__(self, h: flux.Flux, load: Load) -> None:
        self.h = h
        self.topic = load.topic
        self.rank = load.rank
        self.count = load.count
        self.size = load.size
        self.window = load.window
        self.retry_for = load.retry_for
        self.name = job_name()
        self.next_seq = 1
        self.acked = 0
        self.duplicates = 0
        self.retries = 0
        self.errors: dict[str, int] = {}
        self.latency = [0.0] * load.count
        self.sent_at = [0.0] * load.count
        self.retry_queue: list[int] = []
        self.deadline = 0.0
        self.timer: Any = None
        self.settled = 0  # acknowledged or failed for good
        self.nodeid = 0

    def destination(self) -> int:
        """conduit.put goes where the KVS says the datastore is; others to `rank`."""
        if self.topic != PUT:
            if self.rank is None:
                raise OSError(0, f"{self.topic} needs --rank")
            return self.rank
        location = kvsdir.location(self.h)
        if location is None:
            raise OSError(0, "no datastore location in the KVS")
        return int(location["rank"])

    def send(self, seq: int, nodeid: int) -> None:
        payload = {
            "data": packet_data(self.name, seq, self.size),
            "producer": self.name,
            "seq": seq,
        }
        if not self.sent_at[seq - 1]:
            self.sent_at[seq - 1] = time.perf_counter()
        self.h.rpc(self.topic, payload, nodeid=nodeid).then(self.on_response, seq)

    def on_response(self, f: Any, seq: int) -> None:
        try:
            response = f.get()
        except OSError as exc:
            if self.retry_for > 0 and exc.errno in RETRYABLE_ERRNOS:
                self.retries += 1
                self.retry_queue.append(seq)
                return
            key = exc.strerror or str(exc.errno)
            self.errors[key] = self.errors.get(key, 0) + 1
        else:
            self.acked += 1
            self.latency[seq - 1] = time.perf_counter() - self.sent_at[seq - 1]
            if isinstance(response, dict) and response.get("duplicate"):
                self.duplicates += 1
        self.settled += 1
        if self.next_seq <= self.count:
            self.send(self.next_seq, self.nodeid)
            self.next_seq += 1
        elif self.settled == self.count:
            self.h.reactor_stop()

    def on_retry_timer(self, *_: Any) -> None:
        if not self.retry_queue:
            return
        if time.monotonic() > self.deadline:
            self.h.reactor_stop()
            return
        try:
            self.nodeid = self.destination()
        except OSError:
            return
        queued, self.retry_queue = self.retry_queue, []
        for seq in queued:
            self.send(seq, self.nodeid)

    def run(self) -> dict[str, Any]:
        self.nodeid = self.destination()
        self.deadline = time.monotonic() + self.retry_for
        if self.retry_for > 0:
            self.timer = self.h.timer_watcher_create(0.2, self.on_retry_timer, repeat=0.2)
            self.timer.start()
        start = time.time()
        for _ in range(min(self.window, self.count)):
            self.send(self.next_seq, self.nodeid)
            self.next_seq += 1
        self.h.reactor_run()
        end = time.time()
        if self.timer:
            self.timer.stop()
        return {
            "producer": self.name,
            "topic": self.topic,
            "rank": self.h.get_rank(),
            "count": self.count,
            "acked": self.acked,
            "duplicates": self.duplicates,
            "retries": self.retries,
            "unacked": self.count - self.acked - sum(self.errors.values()),
            "errors": self.errors,
            "start": start,
            "end": end,
            "latency_us": [round(x * 1e6) for x in self.latency if x],
        }


def main(load: Load, start_at: float) -> int:
    h = flux.Flux()
    if start_at:
        time.sleep(max(start_at - time.time(), 0))
    try:
        report = Producer(h, load).run()
    except OSError as exc:
        print(f"conduit produce: {exc.strerror}", file=sys.stderr)
        return 1
    print(json.dumps(report), flush=True)
    return 0 if report["acked"] == load.count else 1
