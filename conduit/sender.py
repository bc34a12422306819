"""Conduit.send: packets that leave without waiting, batched and pipelined.

How it makes progress: a daemon thread, started with the Conduit, with
its own Flux handle and reactor (Flux handles are not thread-safe, so it
never touches the caller's).  send() only checks the object, appends it
to a queue under a lock and returns a future.  A byte on a pipe, watched
by the thread's reactor, wakes the thread for the first packet after it
has gone idle, and for each full batch (once until the thread has taken
what came); for the rest it arms a timer for the oldest packet's
`linger`.  So a fast loop costs a wake-up per batch at most, not one per
packet (each is a hand-over of Python's GIL between the two threads).
The thread sends whole batches of `batch` packets, and the rest once
the oldest has waited `linger` seconds (at once after flush()); it keeps
any number of requests in flight, and settles each packet's future from
the datastore's answers.  The caller's own reactor, RPCs and timers on
her handle are never involved, so a plain loop and a job that runs its
own reactor both get their packets out.

Exactly once, as for put_many: every packet carries the client's
producer name and its own seq, and a request that fails with a
retryable errno (protocol.RETRYABLE_ERRNOS) is sent again, same seqs,
to wherever the datastore is then published.  Before that, the thread
waits for every request still in flight, so that packets are sent again
in order and no newer batch overtakes them.  A packet that is not
stored within its timeout fails with ETIMEDOUT (it may still be stored
later, once).

Bounded memory: at most `max_pending` packets are pending (sent and not
yet stored or failed); past that, send() waits for a free place, up to
its timeout, then raises ETIMEDOUT without sending the packet.

Futures' callbacks run on the sender thread: they must not block, nor
use the caller's Flux handle.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import re
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable

import flux

from conduit import kvsdir
from conduit.client import (
    JSON_STRING,
    MAX_BACKOFF,
    REQUEST_TIMEOUT,
    Location,
    Receipt,
    failure,
    locate,
)
from conduit.errors import ConduitError
from conduit.protocol import MAX_PACKETS_PER_PUT, RETRYABLE_ERRNOS

if TYPE_CHECKING:
    from conduit.client import Conduit

TICK = 0.05  # seconds between the thread's checks for deadlines and retries while busy
START_TIMEOUT = 30.0  # seconds the thread may take to connect to Flux
STOP_TIMEOUT = 10.0  # seconds close() waits for the thread to end
FIRST_BACKOFF = 0.05
PACKET_IN_BATCH = re.compile(r"conduit\.put: packet (\d+): ")
DEADLINE = attrgetter("deadline")
SETTLED = ""  # a settled packet's payload: never sent again


class Sent:
    """The future of one send(): it ends stored (a Receipt) or failed (a ConduitError).

    `seq` is its sequence number; `sent_at` and `settled_at` the time.monotonic()
    of its send and of its end.  Its other fields belong to the sender thread.
    """

    __slots__ = (
        "seq", "payload", "sent_at", "settled_at", "deadline", "timeout", "settled", "_answer",
        "_error",
        "_callbacks", "_seen", "_sender",
    )  # fmt: skip

    def __init__(self, seq: int, payload: str, timeout: float, sent: float, sender: Sender) -> None:
        self.seq = seq  # its sequence number: (producer, seq) names it in the store
        self.payload = payload  # its part of a conduit.put payload, as JSON text
        self.sent_at = sent  # time.monotonic() of the send
        self.settled_at = 0.0  # ... and of its end (stored or failed)
        self.timeout = timeout
        self.deadline = sent + timeout
        self.settled = False
        self._answer: dict[str, Any] | None = None  # the module's {"id", "duplicate"}
        self._error: ConduitError | None = None
        self._callbacks: list[Callable[[Sent], None]] | None = None
        self._seen = False  # its failure was shown to the caller (result, exception)
        self._sender = sender

    def done(self) -> bool:
        """Whether it is stored or has failed."""
        return self.settled

    def result(self, timeout: float | None = None) -> Receipt:
        """Its receipt, once stored; waits up to `timeout` seconds (None: until it ends).

        Raises:
            ConduitError: it failed (errno as for put).
            TimeoutError: it has not ended within `timeout`.
        """
        self._wait(timeout)
        if self._error is not None:
            self._sender._seen(self)
            raise self._error
        assert self._answer is not None
        return Receipt(self._answer["id"], self._answer["duplicate"])

    def exception(self, timeout: float | None = None) -> ConduitError | None:
        """Why it failed, or None once stored; waits as result() does."""
        self._wait(timeout)
        if self._error is not None:
            self._sender._seen(self)
        return self._error

    def add_done_callback(self, fn: Callable[[Sent], None]) -> None:
        """Call fn(this) when it ends: at once if it has, else on the sender thread."""
        with self._sender._cond:
            if not self.settled:
                self._callbacks = [*(self._callbacks or []), fn]
                return
        fn(self)

    def __repr__(self) -> str:
        state = "pending" if not self.settled else "failed" if self._error else "stored"
        return f"<Sent seq {self.seq} {state}>"

    def _wait(self, timeout: float | None) -> None:
        if not self.settled:
            with self._sender._cond:
                if not self._sender._cond.wait_for(self.done, timeout):
                    raise TimeoutError(f"packet seq {self.seq} is still pending")


class Request:
    """A conduit.put in flight: its packets, and where and when it went."""

    __slots__ = ("packets", "location", "sent", "rpc")

    def __init__(self, packets: list[Sent], location: Location, sent: float) -> None:
        self.packets = packets
        self.location = location
        self.sent = sent
        self.rpc: Any = None


@dataclass
class SenderStats:
    """Counters of one client's send(), since it was made."""

    sent: int = 0  # packets send() accepted
    pending: int = 0  # of those, not yet stored or failed
    peak_pending: int = 0  # the most pending at once (never above max_pending)
    stored: int = 0  # acknowledged as stored, duplicates included
    duplicates: int = 0  # of those, ones the store had already
    failed: int = 0
    requests: int = 0  # conduit.put requests sent, retries included
    retries: int = 0  # requests that failed with a retryable errno


class Sender:
    """The send() side of one Conduit: a queue, and the thread that empties it.

    Args:
        conduit: the client whose producer name, seqs, timeout and handle it uses.
        batch: at most this many packets per request.
        linger: seconds a packet waits at most for its batch to fill.
        max_pending: at most this many packets pending at once.

    Raises:
        ConduitError: a setting is out of range.
    """

    def __init__(self, conduit: Conduit, batch: int, linger: float, max_pending: int) -> None:
        if not 1 <= batch <= MAX_PACKETS_PER_PUT:
            raise ConduitError(f"batch must be 1 to {MAX_PACKETS_PER_PUT} packets, not {batch}")
        if not 0 <= linger < float("inf"):
            raise ConduitError(f"linger must be 0 or more seconds, not {linger}")
        if max_pending < 1:
            raise ConduitError(f"max_pending must be at least 1, not {max_pending}")
        self.conduit = conduit
        self.batch = batch
        self.linger = linger
        self.max_pending = max_pending
        self._producer = ""  # the conduit's producer name as JSON, set by start()
        # Shared with the caller's threads, under _cond.
        # `with self._lock` on the hot paths: Condition.__enter__ is Python code
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._incoming: deque[Sent] = deque()  # sent, not yet taken by the thread
        self._asleep = True  # no linger timer will take _incoming: wake the thread
        self._signalled = False  # woken, and _incoming not taken since
        self._urgent = False  # flush(): send partial batches now
        self._closing = False
        self._stats = SenderStats()
        self._failures: dict[int, list[Any]] = {}  # errno -> [count, first error], since flush
        self._sent_since_flush = 0
        self._unseen = 0  # of the failures since flush, those no result() or exception() showed
        self._crash: BaseException | None = None  # what stopped the thread, if not close()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._wake_r = self._wake_w = -1
        # The thread's own, touched by nothing else once it runs.
        self._h: Any = None
        self._queue: deque[Sent] = deque()  # to send, in seq order
        self._retry: list[Sent] = []  # failed retryably, sent again once nothing is in flight
        self._requests: dict[Request, None] = {}  # in flight, oldest first
        self._location: Location | None = None
        self._draining = False  # a request failed: send nothing new until all have answered
        self._relocate = False  # ... then look up the datastore again
        self._next_try = 0.0  # monotonic time of the next lookup or resend
        self._backoff = FIRST_BACKOFF
        self._problem = ""  # why the last try failed, for a timeout's message
        self._next_expiry = float("inf")  # the earliest deadline of a pending packet
        self._linger_at = float("inf")  # when the linger timer fires, if armed
        self._ticking = False
        self._linger_timer: Any = None
        self._tick_timer: Any = None

    # The caller's side.
    def send(self, text: str, timeout: float) -> Sent:
        """Queue one packet's data (already encoded); its future.

        Raises:
            ConduitError: closed; or no place among max_pending within timeout.
        """
        now = time.monotonic()
        if self._crash is not None:
            raise ConduitError(f"the conduit's sender thread is not running: {self._crash}")
        with self._lock:
            stats = self._stats
            if stats.pending >= self.max_pending or self._closing:
                self._wait_for_room(now, timeout)
            seq = next(self.conduit._seq)
            # Written as text once here: encoding a batch of dicts on the
            # thread would escape every packet's data again (docs/performance.md).
            data = JSON_STRING(text)
            payload = f'{{"data":{data},"producer":{self._producer},"seq":{seq}}}'
            packet = Sent(seq, payload, timeout, now, self)
            incoming = self._incoming
            incoming.append(packet)
            stats.sent += 1
            pending = stats.pending = stats.pending + 1
            if pending > stats.peak_pending:
                stats.peak_pending = pending
            self._sent_since_flush += 1
            # A full batch wakes the thread too (once until it takes them):
            # it gets the GIL then at the latest after Python's switch
            # interval, rather than at the linger timer.
            full = len(incoming) % self.batch == 0
            wake = (self._asleep or full) and not self._signalled
            self._asleep = False
            self._signalled |= wake
        if wake:
            self._wake()
        return packet

    def _wait_for_room(self, now: float, timeout: float) -> None:
        """Wait (holding _lock) until fewer than max_pending are pending; raise if closed."""
        while self._stats.pending >= self.max_pending and not self._closing:
            left = now + timeout - time.monotonic()
            if left <= 0:
                raise ConduitError(
                    f"{self.max_pending} packets are pending (max_pending), and none was "
                    f"stored or failed within {timeout:.3g}s; this one was not sent",
                    errno.ETIMEDOUT,
                )
            self._cond.wait(left)
        if self._closing:
            raise ConduitError("the client is closed; make a new Conduit to send more")

    def flush(self, timeout: float | None, unseen_only: bool = False) -> None:
        """Wait until nothing is pending; raise one ConduitError for what failed.

        With `unseen_only`, only if a failure was not already shown on its future.
        """
        if self._thread is None:
            return
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._urgent = True
        self._wake()
        with self._cond:
            while self._stats.pending:
                if not self._thread.is_alive():
                    raise ConduitError(
                        f"the conduit's sender thread stopped ({self._crash!r}) with "
                        f"{self._stats.pending} packets pending"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConduitError(
                        f"{self._stats.pending} packets were still pending after {timeout:.3g}s; "
                        "each is tried until its own timeout",
                        errno.ETIMEDOUT,
                    )
                self._cond.wait(min(left, 1.0))
            failures, self._failures = self._failures, {}
            sent, self._sent_since_flush = self._sent_since_flush, 0
            unseen, self._unseen = self._unseen, 0
        if failures and (unseen or not unseen_only):
            raise flush_error(failures, sent)

    def close(self, timeout: float | None, unseen_only: bool = False) -> None:
        """Flush, then stop the thread; pending packets then fail."""
        try:
            self.flush(timeout, unseen_only)
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            if self._thread is not None:
                self._wake()
                self._thread.join(STOP_TIMEOUT)
                if not self._thread.is_alive() and self._wake_w >= 0:
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    self._wake_r = self._wake_w = -1
            _LIVE.discard(self)

    def _seen(self, packet: Sent) -> None:
        """A failure shown to the caller: not worth a line at exit."""
        with self._cond:
            if not packet._seen:
                packet._seen = True
                self._unseen = max(self._unseen - 1, 0)

    def stats(self) -> SenderStats:
        with self._cond:
            return SenderStats(**vars(self._stats))

    def start(self, uri: str | None) -> None:
        """Start the thread, once, and wait until it is connected to Flux.

        `uri` is where (None: where flux.Flux() connects).  A thread that
        cannot connect makes send() raise why; put() does not need it.
        """
        with self._start_lock:
            if self._thread is not None or self._crash is not None:
                return
            self._producer = json.dumps(self.conduit.producer)
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            ready = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(uri, ready), name="conduit-sender", daemon=True
            )
            thread.start()
            if not ready.wait(START_TIMEOUT):
                self._crash = TimeoutError(f"not connected to Flux within {START_TIMEOUT:g}s")
                return
            if self._crash is not None:  # it could not connect, and has ended
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
                return
            self._thread = thread
            _LIVE.add(self)

    def _wake(self) -> None:
        if self._wake_w < 0:  # closed
            return
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._wake_w, b"w")

    # The thread's side.
    def _run(self, uri: str | None, ready: threading.Event) -> None:
        try:
            self._h = flux.Flux(uri) if uri else flux.Flux()
            self._dir = kvsdir.ConduitDir(self._h, self.conduit.stream)
            wake = self._h.fd_watcher_create(self._wake_r, self._event(self._on_wake))
            wake.start()
            self._linger_timer = self._h.timer_watcher_create(self.linger, self._event())
            self._tick_timer = self._h.timer_watcher_create(TICK, self._event(), repeat=TICK)
            with contextlib.suppress(ConduitError):  # ready before the first send, if it can be
                self._location = self.conduit.location = locate(self._dir, deadline=0)
        except BaseException as exc:
            self._crash = exc
            return
        finally:
            ready.set()
        try:
            self._h.reactor_run()
        except BaseException as exc:  # a bug: fail every pending packet with it, never hang
            self._crash = exc
        finally:
            why = f" ({self._crash!r})" if self._crash else ""
            self._fail_all(
                ConduitError(
                    f"the client was closed before this packet was stored{why}", errno.ECANCELED
                )
            )
            wake.stop()

    def _event(self, first: Callable[[], None] | None = None) -> Callable[..., None]:
        """A watcher callback: `first`, then a pump; any exception stops the thread."""

        def callback(*_: Any) -> None:
            try:
                if first:
                    first()
                self._pump()
            except BaseException as exc:
                self._crash = exc
                self._h.reactor_stop()

        return callback

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _on_response(self, rpc: Any, request: Request) -> None:
        try:
            if request in self._requests:
                del self._requests[request]
                try:
                    answer = rpc.get()
                except OSError as exc:
                    self._failed(request, exc)
                else:
                    self._stored(request.packets, answer.get("packets", [answer]))
                    self._backoff, self._problem = FIRST_BACKOFF, ""
            self._pump()
        except BaseException as exc:
            self._crash = exc
            self._h.reactor_stop()

    def _pump(self) -> None:
        """Take new packets, expire old ones, send what may go, set the timers."""
        now = time.monotonic()
        with self._lock:
            self._signalled = False
            if self._incoming:
                earliest = min(map(DEADLINE, self._incoming))
                self._next_expiry = min(self._next_expiry, earliest)
                self._queue.extend(self._incoming)
                self._incoming.clear()
            urgent, closing = self._urgent, self._closing
        if now >= self._next_expiry:
            self._expire(now)
        if self._draining and not self._requests:
            self._draining = False
            self._queue.extendleft(sorted(self._retry, key=lambda p: p.seq, reverse=True))
            self._retry.clear()
            if self._relocate:
                self._relocate, self._location = False, None
        if not self._draining and self._queue and now >= self._next_try:
            if self._location is None:
                self._find_datastore(now)
            if self._location is not None:
                self._send_ready(now, urgent)
        busy = bool(self._queue or self._retry or self._requests)
        if busy != self._ticking:
            self._ticking = busy
            (self._tick_timer.start if busy else self._tick_timer.stop)()
        with self._lock:  # a wake-up per linger at most, not per packet or batch
            arrived = self._incoming[0].sent_at if self._incoming else None
            self._asleep = arrived is None and self._linger_at <= now
        if arrived is not None:
            self._linger(now, arrived + self.linger)
        if closing:  # after close()'s flush: what is still pending fails (ECANCELED)
            self._h.reactor_stop()

    def _find_datastore(self, now: float) -> None:
        earliest = min(p.deadline for p in self._queue)
        try:
            self._location = locate(self._dir, min(earliest, now + MAX_BACKOFF))
            self.conduit.location = self._location
        except ConduitError as exc:
            self._problem = str(exc)
            self._back_off(time.monotonic())

    def _send_ready(self, now: float, urgent: bool) -> None:
        """Send full batches; a partial one if flushing or its oldest has lingered enough."""
        queue = self._queue
        while len(queue) >= self.batch:
            self._request([queue.popleft() for _ in range(self.batch)], now)
        if not queue:
            return
        due = queue[0].sent_at + self.linger
        if urgent or now >= due:
            self._request(list(queue), now)
            queue.clear()
        else:
            self._linger(now, due)

    def _linger(self, now: float, due: float) -> None:
        """Have the linger timer fire by `due`."""
        if not now < self._linger_at <= due:
            self._linger_timer.stop()
            self._linger_timer.reset(after=max(due - now, 0))
            self._linger_at = due

    def _request(self, packets: list[Sent], now: float) -> None:
        assert self._location is not None
        request = Request(packets, self._location, now)
        self._requests[request] = None
        self._stats.requests += 1
        if len(packets) == 1:
            payload = packets[0].payload
        else:
            payload = '{"packets":[' + ",".join(p.payload for p in packets) + "]}"
        try:
            rpc = self._h.rpc(self.conduit.topic, payload, nodeid=self._location.rank)
        except OSError as exc:
            del self._requests[request]
            self._failed(request, exc)
            return
        request.rpc = rpc.then(self._on_response, request)

    def _failed(self, request: Request, exc: OSError) -> None:
        """A request answered with an error: send it again later, or fail its packets."""
        code, reason, problem = failure(exc, request.location, self.conduit.stream)
        live = [p for p in request.packets if not p.settled]
        if code in RETRYABLE_ERRNOS:
            self._stats.retries += 1
            self._problem = problem
            self._retry.extend(live)
            self._draining = self._relocate = True
            self._back_off(time.monotonic())
            return
        named = PACKET_IN_BATCH.match(reason) if len(request.packets) > 1 else None
        if named and int(named[1]) < len(request.packets):
            bad = request.packets[int(named[1])]
            message = f"{request.location} refused packet seq {bad.seq}: conduit.put: "
            self._settle([(bad, None, ConduitError(message + reason[named.end() :], code))])
            self._retry.extend(p for p in live if p is not bad)  # refused with it, not stored
            self._draining = True
            return
        which = f"seq {live[0].seq}" if len(live) == 1 else f"seqs {live[0].seq}-{live[-1].seq}"
        error = ConduitError(f"{request.location} refused packet {which}: {reason}", code)
        self._settle([(p, None, error) for p in live])

    def _expire(self, now: float) -> None:
        """Fail packets past their deadline; give up on requests nobody answers."""
        for request in list(self._requests):
            late = [p for p in request.packets if p.deadline <= now]
            self._settle([(p, None, self._timed_out(p, request.location)) for p in late])
            if all(p.settled for p in request.packets):
                del self._requests[request]  # its answer, if one comes, is ignored
            elif now - request.sent >= REQUEST_TIMEOUT:
                del self._requests[request]
                self._failed(request, TimeoutError(errno.ETIMEDOUT, "no answer"))
        for waiting in (self._queue, self._retry):
            late = [p for p in waiting if p.deadline <= now]
            if late:
                self._settle([(p, None, self._timed_out(p, None)) for p in late])
                keep = [p for p in waiting if p.deadline > now]
                waiting.clear()
                waiting.extend(keep)
        pending = [*self._queue, *self._retry, *(p for r in self._requests for p in r.packets)]
        self._next_expiry = min(
            (p.deadline for p in pending if not p.settled), default=float("inf")
        )

    def _timed_out(self, packet: Sent, location: Location | None) -> ConduitError:
        problem = self._problem or (f"{location} has not answered" if location else "")
        return ConduitError(
            f"no datastore acknowledged packet seq {packet.seq} within {packet.timeout:.3g}s"
            + (f": {problem}" if problem else ""),
            errno.ETIMEDOUT,
        )

    def _back_off(self, now: float) -> None:
        self._next_try = now + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    def _stored(self, packets: list[Sent], answers: list[dict[str, Any]]) -> None:
        """The datastore's answers to a request: each packet stored (or a duplicate)."""
        now = time.monotonic()
        done = []
        duplicates = 0
        with self._lock:
            for packet, answer in zip(packets, answers):
                if packet.settled:
                    continue
                packet.settled = True
                packet.settled_at = now
                packet._answer = answer
                packet.payload = SETTLED  # its data is not kept with the future
                done.append(packet)
                duplicates += answer["duplicate"]
            self._count(done, len(done), duplicates)
        self._call_back(done)

    def _settle(
        self, outcomes: list[tuple[Sent, dict[str, Any] | None, ConduitError | None]]
    ) -> None:
        """Give each packet its answer or error, once, and free its place."""
        now = time.monotonic()
        done = []
        stored = duplicates = 0
        with self._cond:
            for packet, answer, error in outcomes:
                if packet.settled:
                    continue
                packet.settled = True
                packet.settled_at = now
                packet._answer, packet._error = answer, error
                packet.payload = SETTLED
                done.append(packet)
                if error is None:
                    stored += 1
                    duplicates += answer["duplicate"] if answer else 0
                else:
                    entry = self._failures.setdefault(error.errno or 0, [0, error])
                    entry[0] += 1
            self._count(done, stored, duplicates)
        self._call_back(done)

    def _count(self, done: list[Sent], stored: int, duplicates: int) -> None:
        """Count packets just settled and free their places (holding _cond)."""
        if not done:
            return
        stats = self._stats
        stats.stored += stored
        stats.duplicates += duplicates
        stats.failed += len(done) - stored
        self._unseen += len(done) - stored
        stats.pending -= len(done)
        if stats.pending == 0:
            self._urgent = False
        self._cond.notify_all()

    @staticmethod
    def _call_back(done: list[Sent]) -> None:
        for packet in done:
            if packet._callbacks:
                for fn in packet._callbacks:
                    fn(packet)

    def _fail_all(self, error: ConduitError) -> None:
        with self._cond:
            self._queue.extend(self._incoming)
            self._incoming.clear()
        pending = [*self._queue, *self._retry, *(p for r in self._requests for p in r.packets)]
        self._queue.clear()
        self._retry.clear()
        self._requests.clear()
        self._settle([(p, None, error) for p in pending])


def flush_error(failures: dict[int, list[Any]], sent: int) -> ConduitError:
    """One error for the packets that failed since the last flush: how many, and why."""
    count = sum(n for n, _ in failures.values())
    reasons = []
    for n, first in failures.values():
        reasons.append(str(first) if n == 1 else f"{first} (and {n - 1} more like it)")
    first_errno = next(iter(failures.values()))[1].errno
    return ConduitError(
        f"{count} of {sent} packets sent since the last flush failed: " + "; ".join(reasons),
        first_errno,
    )


_LIVE: weakref.WeakSet[Sender] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """A script that never closed its client: its packets still go, failures on stderr."""
    for sender in list(_LIVE):
        try:
            sender.close(None, unseen_only=True)
        except ConduitError as exc:
            print(f"conduit: at exit: {exc}", file=sys.stderr, flush=True)
