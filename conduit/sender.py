"""Conduit.send: packets that leave without waiting, batched and pipelined.

How it makes progress.  The sender has a Flux handle of its own, never
the caller's, and whoever holds its lock drives it: the caller, in a
send() that fills a batch, in a send that waits for room, in flush() and
in a future's result(); and a daemon thread the rest of the time.
Requests are plain messages on that handle (flux_send), their answers
taken with flux_recv without blocking, so no reactor runs on it and no
RPC future is made per request.  A loop that sends thus sends each full
batch and takes the answers that have come itself, with no wake-up of
another thread per batch and no hand-over of Python's GIL (each cost a
loop more than its packets, docs/performance.md).  The thread sends a
partial batch once its oldest packet has waited `linger` seconds, takes
answers once no caller has for GRACE seconds and none waits for one (a
loop that stopped to compute), finds the datastore (through a second
handle of its own, for the KVS) and fails packets past their deadline.
The caller's own handle, reactor and RPCs are never involved, so a plain
loop and a job that runs its own reactor both get their packets out.

Exactly once, as for put_many: every packet carries the client's
producer name and its own seq, and a request that fails with a
retryable errno (protocol.RETRYABLE_ERRNOS) is sent again, same seqs,
to wherever the datastore is then published.  Before that, the sender
waits for every request still in flight, so that packets are sent again
in order and no newer batch overtakes them.  A packet that is not
stored within its timeout fails with ETIMEDOUT (it may still be stored
later, once).

Bounded memory: at most `max_pending` packets are pending (sent and not
yet stored or failed); past that, send() waits for a free place, up to
its timeout, then raises ETIMEDOUT without sending the packet.

Futures' callbacks run on whichever thread took the answer (the
sender's, or a caller's in send or flush), without the sender's lock:
they must not block, nor use the caller's Flux handle.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import re
import select
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import flux
from flux.core.inner import ffi, lib

from conduit import kvsdir
from conduit.client import (
    MAX_BACKOFF,
    REQUEST_TIMEOUT,
    Location,
    Receipt,
    failure,
    locate,
)
from conduit.errors import ConduitError
from conduit.jsontext import JSON_STRING
from conduit.protocol import MAX_PACKETS_PER_PUT, RETRYABLE_ERRNOS

if TYPE_CHECKING:
    from conduit.client import Conduit

TICK = 0.05  # seconds between checks for deadlines and retries while busy
GRACE = 0.005  # seconds after a caller last took answers before the thread does
START_TIMEOUT = 30.0  # seconds the thread may take to connect to Flux
STOP_TIMEOUT = 10.0  # seconds close() waits for the thread to end
FIRST_BACKOFF = 0.05
PACKET_IN_BATCH = re.compile(r"conduit\.put: packet (\d+): ")
SETTLED = ""  # a settled packet's payload: never sent again
NEVER = float("inf")


class Sent:
    """The future of one send(): it ends stored (a Receipt) or failed (a ConduitError).

    `seq` is its sequence number; `sent_at` and `settled_at` the time.monotonic()
    of its send and of its end.  Its other fields belong to the sender.
    """

    __slots__ = (
        "seq", "payload", "sent_at", "deadline", "timeout", "_end", "_callbacks", "_seen",
        "_sender",
    )  # fmt: skip

    def __init__(self, seq: int, payload: str, timeout: float, sent: float, sender: Sender) -> None:
        self.seq = seq  # its sequence number: (producer, seq) names it in the store
        self.payload = payload  # its part of a conduit.put payload, as JSON text
        self.sent_at = sent  # time.monotonic() of the send
        self.timeout = timeout
        self.deadline = sent + timeout
        self._end: Answered | Failed | None = None  # how it ended, shared by its request's
        self._callbacks: list[Callable[[Sent], None]] | None = None
        self._seen = False  # its failure was shown to the caller (result, exception)
        self._sender = sender

    @property
    def settled_at(self) -> float:
        """time.monotonic() of its end (0.0 while pending)."""
        return self._end.settled_at if self._end is not None else 0.0

    def done(self) -> bool:
        """Whether it is stored or has failed."""
        return self._end is not None

    def result(self, timeout: float | None = None) -> Receipt:
        """Its receipt, once stored; waits up to `timeout` seconds (None: until it ends).

        Raises:
            ConduitError: it failed (errno as for put).
            TimeoutError: it has not ended within `timeout`.
        """
        self._wait(timeout)
        end = self._end
        if isinstance(end, Failed):
            self._sender._seen(self)
            raise end.error
        assert end is not None
        return end.receipt(self)

    def exception(self, timeout: float | None = None) -> ConduitError | None:
        """Why it failed, or None once stored; waits as result() does."""
        self._wait(timeout)
        if isinstance(self._end, Failed):
            self._sender._seen(self)
            return self._end.error
        return None

    def add_done_callback(self, fn: Callable[[Sent], None]) -> None:
        """Call fn(this) when it ends: at once if it has, else where its answer is taken."""
        with self._sender._lock:
            if self._end is None:
                self._callbacks = [*(self._callbacks or []), fn]
                self._sender._watched = True
                return
        fn(self)

    def __repr__(self) -> str:
        end = self._end
        state = "pending" if end is None else "failed" if isinstance(end, Failed) else "stored"
        return f"<Sent seq {self.seq} {state}>"

    def _wait(self, timeout: float | None) -> None:
        if self._end is None and not self._sender.wait_for(self.done, timeout):
            raise TimeoutError(f"packet seq {self.seq} is still pending")
        if self._end is None:  # nothing holds it: lost to an interrupted send (_lost)
            self._end = Failed(self._sender._lost_error, time.monotonic())


class Failed:
    """How a packet that failed ended."""

    __slots__ = ("error", "settled_at")

    def __init__(self, error: ConduitError, settled_at: float) -> None:
        self.error = error
        self.settled_at = settled_at


class Answered:
    """The module's answer to one request, shared by the packets it stored.

    Read only when a receipt is asked for: a loop that only flushes never
    pays for decoding it.  Its form is fixed (module/conduit.c,
    answer_item): {"id":N,"duplicate":B} for one packet, {"packets":[...]}
    for a batch, in the request's order.
    """

    __slots__ = ("text", "settled_at", "seqs", "_items")

    def __init__(self, text: str, settled_at: float, seqs: list[int]) -> None:
        self.text = text
        self.settled_at = settled_at
        self.seqs = seqs  # its packets' seqs, in order (not the packets: no cycle to collect)
        self._items: list[dict[str, Any]] | None = None

    def items(self) -> list[dict[str, Any]]:
        if self._items is None:
            answer = json.loads(self.text)
            self._items = answer.get("packets", [answer])
        return self._items

    def count(self) -> tuple[int, int]:
        """How many packets it answers, and how many of those were duplicates."""
        text = self.text
        answered = text.count('"duplicate":')
        if answered == text.count('"id":'):  # the fixed form
            return answered, text.count('"duplicate":true')
        items = self.items()
        return len(items), sum(bool(i["duplicate"]) for i in items)

    def receipt(self, packet: Sent) -> Receipt:
        item = self.items()[self.seqs.index(packet.seq)]
        return Receipt(item["id"], item["duplicate"])


class Request:
    """A conduit.put in flight: its packets, and where and when it went."""

    __slots__ = ("packets", "location", "sent")

    def __init__(self, packets: list[Sent], location: Location, sent: float) -> None:
        self.packets = packets
        self.location = location
        self.sent = sent


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


class Handle:
    """The sender's Flux handle, for requests as plain messages and their answers.

    Not thread-safe: the Sender uses it only under its lock.
    """

    def __init__(self, uri: str | None, topic: str) -> None:
        self.flux = flux.Flux(uri) if uri else flux.Flux()  # kept: it owns the handle
        self.ptr = self.flux.handle
        self.pollfd = lib.flux_pollfd(self.ptr)
        self.topic = topic.encode()
        self._match = ffi.new("struct flux_match *")
        self._match.typemask = lib.FLUX_MSGTYPE_ANY  # what is not an answer is dropped
        self._match.matchtag = lib.FLUX_MATCHTAG_NONE
        self._match.topic_glob = ffi.NULL
        self._type = ffi.new("int *")
        self._tag = ffi.new("uint32_t *")
        self._errnum = ffi.new("int *")
        self._text = ffi.new("char **")

    def request(self, payload: str, rank: int) -> int:
        """Send a request to `rank`; its matchtag.

        Raises:
            OSError: it could not be sent.
        """
        msg = lib.flux_request_encode(self.topic, payload.encode())
        if msg == ffi.NULL:
            raise OSError(ffi.errno, os.strerror(ffi.errno))
        try:
            tag = lib.flux_matchtag_alloc(self.ptr)
            if tag == lib.FLUX_MATCHTAG_NONE:
                raise OSError(errno.EAGAIN, "no matchtag free: too many requests in flight")
            if (
                lib.flux_msg_set_nodeid(msg, rank) < 0
                or lib.flux_msg_set_matchtag(msg, tag) < 0
                or lib.flux_send(self.ptr, msg, 0) < 0
            ):
                code = ffi.errno
                lib.flux_matchtag_free(self.ptr, tag)
                raise OSError(code, os.strerror(code))
            return tag
        finally:
            lib.flux_msg_destroy(msg)

    def answer(self) -> tuple[int, int, str] | None:
        """An answer that has come (matchtag, errnum, payload or error text), or None.

        Raises:
            OSError: the handle failed (the broker is gone).
        """
        while True:
            msg = lib.flux_recv(self.ptr, self._match[0], lib.FLUX_O_NONBLOCK)
            if msg == ffi.NULL:
                code = ffi.errno
                if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return None
                raise OSError(code, f"the conduit's Flux handle failed: {os.strerror(code)}")
            lib.flux_msg_get_type(msg, self._type)
            if self._type[0] == lib.FLUX_MSGTYPE_RESPONSE:
                break
            lib.flux_msg_destroy(msg)
        try:
            lib.flux_msg_get_matchtag(msg, self._tag)
            lib.flux_msg_get_errnum(msg, self._errnum)
            text = ""
            if lib.flux_msg_get_string(msg, self._text) == 0 and self._text[0] != ffi.NULL:
                text = ffi.string(self._text[0]).decode("utf-8", "replace")
            return self._tag[0], self._errnum[0], text
        finally:
            lib.flux_msg_destroy(msg)

    def free(self, tag: int) -> None:
        lib.flux_matchtag_free(self.ptr, tag)

    def readable(self) -> bool:
        """Whether answers wait; re-arms pollfd (edge-triggered) for select()."""
        return bool(lib.flux_pollevents(self.ptr) & lib.FLUX_POLLIN)


class Sender:
    """The send() side of one Conduit: a queue, its handle, and the thread that helps.

    Args:
        conduit: the client whose producer name, seqs, timeout and stream it uses.
        batch: at most this many packets per request.
        linger: seconds a packet waits at most for its batch to fill.
        max_pending: at most this many packets pending at once.

    Raises:
        ConduitError: a setting is out of range.
    """

    def __init__(self, conduit: Conduit, batch: int, linger: float, max_pending: int) -> None:
        if not 1 <= batch <= MAX_PACKETS_PER_PUT:
            raise ConduitError(f"batch must be 1 to {MAX_PACKETS_PER_PUT} packets, not {batch}")
        if not 0 <= linger < NEVER:
            raise ConduitError(f"linger must be 0 or more seconds, not {linger}")
        if max_pending < 1:
            raise ConduitError(f"max_pending must be at least 1, not {max_pending}")
        self.conduit = conduit
        self.batch = batch
        self.linger = linger
        self.max_pending = max_pending
        self._producer = ""  # the conduit's producer name as JSON, set by start()
        # From here to _unseen, under _lock (a Lock: nothing takes it twice).
        self._lock = threading.Lock()
        self._handle: Handle | None = None
        self._queue: deque[Sent] = deque()  # to send, in seq order
        self._retry: list[Sent] = []  # failed retryably, sent again once nothing is in flight
        self._requests: dict[int, Request] = {}  # in flight by matchtag, oldest first
        self._abandoned: set[int] = set()  # matchtags of requests given up on: freed on an answer
        self._location: Location | None = None
        self._draining = False  # a request failed: send nothing new until all have answered
        self._relocate = False  # ... then look up the datastore again
        self._next_try = 0.0  # monotonic time of the next lookup or resend
        self._backoff = FIRST_BACKOFF
        self._problem = ""  # why the last try failed, for a timeout's message
        self._next_expiry = NEVER  # the earliest deadline of a pending packet
        self._urgent = False  # flush(): send partial batches now
        self._closing = False
        self._caller_at = -NEVER  # when a caller last took answers
        self._callers_waiting = 0  # callers blocked in _progress on answers: the thread leaves them
        self._thread_wakes_at = 0.0  # when the thread looks again unless woken
        self._to_call: list[Sent] = []  # settled, with callbacks still to call
        self._watched = False  # a callback was ever added to a pending packet
        # sent and settled counted apart, so that a send touches one counter
        self._sent = self._settled = self._peak = 0
        self._stats = SenderStats()  # its other counters
        self._seq: Iterator[int] = iter(())  # the conduit's, set by start()
        self._failures: dict[int, list[Any]] = {}  # errno -> [count, first error], since flush
        self._flushed_at = 0  # _sent at the last flush
        self._unseen = 0  # of the failures since flush, those no result() or exception() showed
        self._crash: BaseException | None = None  # what stopped the thread, if not close()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._wake_r = self._wake_w = -1
        self._dir: kvsdir.ConduitDir | None = None  # the thread's, for finding the datastore
        self._lost_error = ConduitError(
            "not sent: the send or flush that held it was interrupted", errno.ECANCELED
        )

    # The caller's side.
    def send(self, text: str, timeout: float) -> Sent:
        """Queue one packet's data (already encoded); its future.

        Raises:
            ConduitError: closed; or no place among max_pending within timeout.
        """
        now = time.monotonic()
        if self._crash is not None:
            raise ConduitError(f"the conduit's sender thread is not running: {self._crash}")
        wake = False
        with self._lock:
            if self._sent - self._settled >= self.max_pending or self._closing:
                self._wait_for_room(now, timeout)
            seq = next(self._seq)
            # Written as text once here: encoding a batch of dicts later
            # would escape every packet's data again (docs/performance.md).
            payload = f'{{"data":{JSON_STRING(text)},"producer":{self._producer},"seq":{seq}}}'
            packet = Sent(seq, payload, timeout, now, self)
            self._sent += 1
            if packet.deadline < self._next_expiry:
                self._next_expiry = packet.deadline
            queue = self._queue
            queue.append(packet)
            if len(queue) >= self.batch:
                self._pump(now, by_caller=True)
                wake = self._due(now) < self._thread_wakes_at
            elif len(queue) == 1:  # its linger starts: the thread sends it if no batch fills
                wake = now + self.linger < self._thread_wakes_at
            callbacks = self._take_callbacks() if self._to_call else None
        if wake:
            self._wake()
        if callbacks:
            _call_back(callbacks)
        return packet

    def _wait_for_room(self, now: float, timeout: float) -> None:
        """Wait (holding _lock) until fewer than max_pending are pending; raise if closed."""

        def room() -> bool:
            return self._sent - self._settled < self.max_pending or self._closing

        if not self._progress(room, now + timeout):
            raise ConduitError(
                f"{self.max_pending} packets are pending (max_pending), and none was "
                f"stored or failed within {timeout:.3g}s; this one was not sent",
                errno.ETIMEDOUT,
            )
        if self._closing:
            raise ConduitError("the client is closed; make a new Conduit to send more")

    def wait_for(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Make progress until done() (True) or the timeout (False)."""
        deadline = NEVER if timeout is None else time.monotonic() + timeout
        with self._lock:
            finished = self._progress(done, deadline)
            callbacks = self._take_callbacks()
        _call_back(callbacks)
        return finished

    def flush(self, timeout: float | None, unseen_only: bool = False) -> None:
        """Wait until nothing is pending; raise one ConduitError for what failed.

        With `unseen_only`, only if a failure was not already shown on its future.
        """
        if self._thread is None:
            return
        deadline = NEVER if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._urgent = True
            try:
                flushed = self._progress(lambda: self._sent == self._settled, deadline)
            finally:
                callbacks = self._take_callbacks()
            if flushed:
                failures, self._failures = self._failures, {}
                sent, self._flushed_at = self._sent - self._flushed_at, self._sent
                unseen, self._unseen = self._unseen, 0
            else:
                pending = self._sent - self._settled
        _call_back(callbacks)
        if not flushed:
            raise ConduitError(
                f"{pending} packets were still pending after {timeout:.3g}s; "
                "each is tried until its own timeout",
                errno.ETIMEDOUT,
            )
        if failures and (unseen or not unseen_only):
            raise flush_error(failures, sent)

    def close(self, timeout: float | None, unseen_only: bool = False) -> None:
        """Flush, then stop the thread; pending packets then fail."""
        try:
            self.flush(timeout, unseen_only)
        finally:
            with self._lock:
                self._closing = True
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
        with self._lock:
            if not packet._seen:
                packet._seen = True
                self._unseen = max(self._unseen - 1, 0)

    def stats(self) -> SenderStats:
        with self._lock:
            stats = SenderStats(**vars(self._stats))
            stats.sent, stats.pending = self._sent, self._sent - self._settled
            stats.peak_pending = max(self._peak, stats.pending)
            return stats

    def start(self, uri: str | None) -> None:
        """Start the thread, once, and wait until it is connected to Flux.

        `uri` is where (None: where flux.Flux() connects).  A thread that
        cannot connect makes send() raise why; put() does not need it.
        """
        with self._start_lock:
            if self._thread is not None or self._crash is not None:
                return
            self._producer = json.dumps(self.conduit.producer)
            self._seq = self.conduit._seq
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

    def _progress(self, done: Callable[[], bool], deadline: float) -> bool:
        """Take answers and send what may go until done() or the deadline (holding _lock).

        Between tries it lets go of the lock and waits for an answer (or a
        short while, when none is in flight: the thread is finding the
        datastore, or a retry is backing off).  While it waits for an
        answer, the thread leaves the answers to it.
        """
        try:
            return self._progress_until(done, deadline)
        finally:
            if self._requests and self._caller_at + GRACE < self._thread_wakes_at:
                self._wake()  # it slept on, leaving the answers to this caller

    def _progress_until(self, done: Callable[[], bool], deadline: float) -> bool:
        while True:
            now = time.monotonic()
            self._pump(now, by_caller=True)
            if done():
                return True
            if not (self._queue or self._retry or self._requests):
                if self._sent > self._settled:
                    self._lost()
                return True  # nothing can happen that done() waits for
            if self._crash is not None:
                raise ConduitError(
                    f"the conduit's sender thread stopped ({self._crash!r}) with "
                    f"{self._sent - self._settled} packets pending"
                )
            left = deadline - now
            if left <= 0:
                return False
            assert self._handle is not None
            watch = bool(self._requests)
            if watch and self._handle.readable():
                continue
            due = self._due(now)
            # answers wake it; else the thread is finding the datastore, or a back-off runs
            wait = min(left, max(due - now, 0.0), TICK) if watch else min(left, GRACE)
            if due < self._thread_wakes_at:  # the datastore to find, say
                self._wake()
            callbacks = self._take_callbacks()
            self._callers_waiting += watch
            self._lock.release()
            try:
                _call_back(callbacks)
                if watch:
                    select.select([self._handle.pollfd], [], [], wait)
                else:
                    time.sleep(wait)
            finally:
                self._lock.acquire()
                self._callers_waiting -= watch

    def _lost(self) -> None:
        """Fail the packets counted as pending that nothing holds.

        Only a KeyboardInterrupt (or another exception raised in the
        caller's thread) between taking packets and sending them leaves
        such: without this, the flush at exit would wait for them forever.
        """
        lost = self._sent - self._settled
        self._note_failures(self._lost_error, lost)
        self._count(lost, 0, 0)

    # The thread's side.
    def _run(self, uri: str | None, ready: threading.Event) -> None:
        try:
            handle = Handle(uri, self.conduit.topic)
            lookups = flux.Flux(uri) if uri else flux.Flux()  # the KVS's, the thread's alone
            self._dir = kvsdir.ConduitDir(lookups, self.conduit.stream)
            try:  # ready before the first send, if it can be
                self._location = self.conduit.location = locate(self._dir, deadline=0)
            except ConduitError as exc:
                self._problem = str(exc)
            self._handle = handle
        except BaseException as exc:
            self._crash = exc
            return
        finally:
            ready.set()
        try:
            while self._step():
                pass
        except BaseException as exc:  # a bug: fail every pending packet with it, never hang
            self._crash = exc
        finally:
            why = f" ({self._crash!r})" if self._crash else ""
            with self._lock:
                self._fail_all(
                    ConduitError(
                        f"the client was closed before this packet was stored{why}",
                        errno.ECANCELED,
                    )
                )
                callbacks = self._take_callbacks()
            _call_back(callbacks)

    def _step(self) -> bool:
        """One look: do what is due, then sleep until the next thing is; False once closed."""
        assert self._handle is not None
        with self._lock:
            if self._closing:
                return False
            now = time.monotonic()
            self._thread_wakes_at = 0.0  # awake: nobody need wake it
            # no caller is taking answers: none waits for one, none took any of late
            quiet = not self._callers_waiting and now - self._caller_at >= GRACE
            if quiet or self._due(now) <= now:
                self._pump(now, by_caller=False)
            find = (
                self._location is None
                and bool(self._queue)
                and not self._draining
                and now >= self._next_try
            )
            watch = quiet and bool(self._requests)
            again = find or (watch and self._handle.readable())
            if not again:
                wakes_at = self._due(now)
                if not quiet and not self._callers_waiting:  # a waiting caller wakes it on leaving
                    wakes_at = min(wakes_at, self._caller_at + GRACE)
                if self._requests:
                    wakes_at = min(wakes_at, now + TICK)
                self._thread_wakes_at = wakes_at
            earliest = min(p.deadline for p in self._queue) if find else now
            callbacks = self._take_callbacks()
        _call_back(callbacks)
        if find:
            self._find_datastore(earliest)
        elif not again:
            fds = [self._wake_r, self._handle.pollfd] if watch else [self._wake_r]
            timeout = None if wakes_at == NEVER else max(wakes_at - now, 0.0)
            readable, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
        return True

    def _find_datastore(self, earliest: float) -> None:
        """Look the datastore up (without the lock: it may wait up to MAX_BACKOFF).

        One look first, so that a packet that times out meanwhile says why.
        """
        assert self._dir is not None
        now = time.monotonic()
        for deadline in (now, min(earliest, now + MAX_BACKOFF)):
            try:
                location = locate(self._dir, deadline)
            except ConduitError as exc:
                with self._lock:
                    self._problem = str(exc)
                continue
            with self._lock:
                self._location = self.conduit.location = location
            return
        with self._lock:
            self._back_off(time.monotonic())

    # Under the lock, on either side.
    def _pump(self, now: float, by_caller: bool) -> None:
        """Take the answers that came, expire old packets, send what may go."""
        if by_caller:
            self._caller_at = now
        if self._requests:
            try:
                self._take_answers()
            except OSError as exc:  # the broker is gone: nothing can be stored any more
                self._crash = exc
                self._fail_all(ConduitError(str(exc), exc.errno))
                return
        if now >= self._next_expiry:
            self._expire(now)
        if self._draining and not self._requests:
            self._draining = False
            self._queue.extendleft(sorted(self._retry, key=lambda p: p.seq, reverse=True))
            self._retry.clear()
            if self._relocate:
                self._relocate, self._location = False, None
        if (
            self._queue
            and self._location is not None
            and not self._draining
            and now >= self._next_try
        ):
            self._send_ready(now)

    def _due(self, now: float) -> float:
        """When something must be done next, with no new send or answer.

        While a drain waits for the requests in flight, only their answers
        (or deadlines) can end it: a resend's back-off is not due before.
        """
        due = self._next_expiry
        if self._draining:
            if not self._requests:  # over: the next pump sends the retries
                due = min(due, now)
        elif self._queue:
            if self._location is None:
                due = min(due, self._next_try)
            else:
                leaves = now if self._urgent else self._queue[0].sent_at + self.linger
                due = min(due, max(leaves, self._next_try))
        return due

    def _take_answers(self) -> None:
        assert self._handle is not None
        handle, requests = self._handle, self._requests
        while (answer := handle.answer()) is not None:
            tag, errnum, text = answer
            request = requests.pop(tag, None)
            if request is None:
                if tag in self._abandoned:  # a late answer: its matchtag may be reused now
                    self._abandoned.discard(tag)
                    handle.free(tag)
                continue
            handle.free(tag)
            if errnum:
                self._failed(request, OSError(errnum, text or os.strerror(errnum)))
                continue
            self._stored(request.packets, text)
            self._backoff, self._problem = FIRST_BACKOFF, ""

    def _send_ready(self, now: float) -> None:
        """Send full batches; a partial one if flushing or its oldest has lingered enough.

        It stops at a request that could not be sent: nothing may overtake it.
        """
        queue, batch = self._queue, self.batch
        while len(queue) >= batch and not self._draining:
            if len(queue) == batch:  # the common case: the send that filled it
                packets = list(queue)
                queue.clear()
            else:
                packets = [queue.popleft() for _ in range(batch)]
            self._request(packets, now)
        if queue and not self._draining and (self._urgent or now >= queue[0].sent_at + self.linger):
            packets = list(queue)
            queue.clear()
            self._request(packets, now)

    def _request(self, packets: list[Sent], now: float) -> None:
        assert self._location is not None and self._handle is not None
        request = Request(packets, self._location, now)
        self._stats.requests += 1
        if len(packets) == 1:
            payload = packets[0].payload
        else:
            payload = '{"packets":[' + ",".join([p.payload for p in packets]) + "]}"
        try:
            tag = self._handle.request(payload, self._location.rank)
        except OSError as exc:
            self._failed(request, exc)
            return
        self._requests[tag] = request

    def _abandon(self, tag: int) -> None:
        del self._requests[tag]
        self._abandoned.add(tag)  # its answer, if one comes, is ignored

    def _failed(self, request: Request, exc: OSError) -> None:
        """A request answered with an error: send it again later, or fail its packets."""
        code, reason, problem = failure(exc, request.location, self.conduit.stream)
        live = [p for p in request.packets if p._end is None]
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
            self._settle([(bad, ConduitError(message + reason[named.end() :], code))])
            self._retry.extend(p for p in live if p is not bad)  # refused with it, not stored
            self._draining = True
            return
        which = f"seq {live[0].seq}" if len(live) == 1 else f"seqs {live[0].seq}-{live[-1].seq}"
        error = ConduitError(f"{request.location} refused packet {which}: {reason}", code)
        self._settle([(p, error) for p in live])

    def _expire(self, now: float) -> None:
        """Fail packets past their deadline; give up on requests nobody answers."""
        for tag, request in list(self._requests.items()):
            late = [p for p in request.packets if p.deadline <= now]
            self._settle([(p, self._timed_out(p, request.location)) for p in late])
            if all(p._end is not None for p in request.packets):
                self._abandon(tag)
            elif now - request.sent >= REQUEST_TIMEOUT:
                self._abandon(tag)
                self._failed(request, TimeoutError(errno.ETIMEDOUT, "no answer"))
        for waiting in (self._queue, self._retry):
            late = [p for p in waiting if p.deadline <= now]
            if late:
                self._settle([(p, self._timed_out(p, None)) for p in late])
                keep = [p for p in waiting if p.deadline > now]
                waiting.clear()
                waiting.extend(keep)
        pending = [
            *self._queue,
            *self._retry,
            *(p for r in self._requests.values() for p in r.packets),
        ]
        self._next_expiry = min((p.deadline for p in pending if p._end is None), default=NEVER)

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

    def _stored(self, packets: list[Sent], text: str) -> None:
        """The datastore's answer to a request: each packet stored (or a duplicate)."""
        answered = Answered(text, time.monotonic(), [p.seq for p in packets])
        count, duplicates = answered.count()
        if count < len(packets):  # the rest stay pending, and expire
            packets = packets[:count]
        late = 0
        for packet in packets:  # one field each: the hot path of a loop
            if packet._end is None:
                packet._end = answered
                packet.payload = SETTLED  # its data is not kept with the future
            else:  # past its deadline already: counted as failed
                late += 1
        if late:
            items = answered.items()
            duplicates -= sum(
                bool(items[i]["duplicate"]) for i, p in enumerate(packets) if p._end is not answered
            )
        if self._watched:
            self._to_call.extend(p for p in packets if p._callbacks and p._end is answered)
        self._count(len(packets) - late, len(packets) - late, duplicates)

    def _settle(self, failures: list[tuple[Sent, ConduitError]]) -> None:
        """Fail each packet with its error, once, and free its place."""
        now = time.monotonic()
        done = 0
        for packet, error in failures:
            if packet._end is not None:
                continue
            packet._end = Failed(error, now)
            packet.payload = SETTLED
            if packet._callbacks:
                self._to_call.append(packet)
            done += 1
            self._note_failures(error, 1)
        self._count(done, 0, 0)

    def _note_failures(self, error: ConduitError, count: int) -> None:
        """Count failures by errno for flush's one error, the first of each kept."""
        entry = self._failures.setdefault(error.errno or 0, [0, error])
        entry[0] += count

    def _count(self, done: int, stored: int, duplicates: int) -> None:
        """Count packets just settled and free their places."""
        if not done:
            return
        # pending falls only here, so its peak is the most it was before a fall
        self._peak = max(self._peak, self._sent - self._settled)
        stats = self._stats
        stats.stored += stored
        stats.duplicates += duplicates
        stats.failed += done - stored
        self._unseen += done - stored
        self._settled += done
        if self._sent == self._settled:
            self._urgent = False

    def _take_callbacks(self) -> list[Sent]:
        callbacks, self._to_call = self._to_call, []
        return callbacks

    def _fail_all(self, error: ConduitError) -> None:
        pending = [
            *self._queue,
            *self._retry,
            *(p for r in self._requests.values() for p in r.packets),
        ]
        self._queue.clear()
        self._retry.clear()
        self._requests.clear()
        self._settle([(p, error) for p in pending])


def _call_back(done: list[Sent]) -> None:
    """Call the done-callbacks of packets just settled (without the sender's lock)."""
    for packet in done:
        for fn in packet._callbacks or ():
            fn(packet)


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
