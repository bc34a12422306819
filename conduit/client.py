"""The client API: put your own JSON objects through the conduit.

    from conduit.client import Conduit

    conduit = Conduit()                      # finds the datastore, wherever it runs
    conduit.put({"step": 1, "energy": 1.5})  # returns once the packet is stored
    conduit.put_many(results)                # batched and pipelined
    conduit.send({"step": 2})                # returns at once with a future
    conduit.flush()                          # every packet sent so far stored, or ConduitError
    metrics = Conduit(stream="metrics")      # another stream, served by its own datastore

Every packet carries this client's producer name and a sequence number,
so a put retried after a timeout or a datastore restart is stored once.
A put waits at most `timeout` seconds, over all its retries; what cannot
be stored raises ConduitError with the reason and Flux's errno.

`send` has a Flux handle of its own (conduit.sender): the send that
fills a batch sends it, and a daemon thread that each Conduit starts
sends what lingers and takes answers while your code does not.  It never
touches your handle or reactor, so a plain loop and a job running its
own reactor both get their packets out with only send and flush.  Don't
carry a Conduit across fork(), and don't block in a future's callback.

Runs in any Python that imports flux (`flux python`): the standard
library and flux only.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import flux
import flux.job

from conduit import kvsdir
from conduit.errors import ConduitError, connect
from conduit.jsontext import JSON, c_encoder
from conduit.protocol import (
    DEFAULT_BATCH,
    DEFAULT_LINGER,
    DEFAULT_MAX_PENDING,
    DEFAULT_STREAM,
    DEFAULT_TIMEOUT,
    MAX_DATA,
    MAX_DEPTH,
    MAX_PACKETS_PER_PUT,
    RETRYABLE_ERRNOS,
    topic,
)

if TYPE_CHECKING:
    from conduit.sender import Sender, SenderStats, Sent

DEFAULT_IN_FLIGHT = 8
REQUEST_TIMEOUT = 10.0  # an unanswered request is sent again after this long
MAX_BACKOFF = 1.0


def how_to_start(stream: str) -> str:
    """What to do when no datastore serves `stream`."""
    option = "" if stream == DEFAULT_STREAM else f" --stream {stream}"
    return f"submit one first: flux submit -N1 -n1 flux python -m conduit datastore{option}"


_C_ENCODE = c_encoder()

_instances = itertools.count(1)


@dataclass(frozen=True)
class Receipt:
    """A stored packet: its id in the datastore, and whether the store already had it."""

    id: int
    duplicate: bool


@dataclass(frozen=True)
class Location:
    """Where the datastore runs, as it published it."""

    rank: int
    jobid: int
    host: str

    def __str__(self) -> str:
        return f"datastore job {flux.job.JobID(self.jobid).f58} on rank {self.rank}"


def job_name() -> str:
    """This job's id (f58, ASCII), or host-pid-time outside a job."""
    if "FLUX_JOB_ID" in os.environ:
        return flux.job.JobID(os.environ["FLUX_JOB_ID"]).f58plain
    return f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"


def default_producer() -> str:
    """A producer name stable for one job task and unique across jobs.

    The job name and task rank.  A second client in the same process
    gets a suffix, so two clients never share sequence numbers.
    """
    base = f"{job_name()}.{os.environ.get('FLUX_TASK_RANK', '0')}"
    n = next(_instances)
    return base if n == 1 else f"{base}.{n}"


def encode(data: Any, what: str = "the packet") -> str:
    """A packet's data as the JSON text the module accepts.

    Raises:
        ConduitError: not a JSON object, not encodable, or over the
            module's default limits (size, nesting); the message names
            the packet as `what`.
    """
    if type(data) is not dict and not isinstance(data, Mapping):
        raise ConduitError(f"{what} is not a JSON object (a dict) but {type(data).__name__}")
    try:
        text = "".join(_C_ENCODE(data, 0)) if _C_ENCODE else JSON.encode(data)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConduitError(f"{what} cannot be sent as JSON: {exc}", errno.EPROTO) from None
    if len(text) > MAX_DATA:  # ASCII (JSON's \u escapes), so characters are bytes
        raise ConduitError(
            f"{what} is {len(text)} bytes as JSON, over the limit of {MAX_DATA}",
            errno.EMSGSIZE,
        )
    # each level takes two characters and a bracket, so a short text, or
    # one of few brackets (the common case), needs no walk
    if (
        len(text) > 2 * MAX_DEPTH
        and text.count("{") + text.count("[") > MAX_DEPTH
        and (depth := nesting(data)) > MAX_DEPTH
    ):
        raise ConduitError(
            f"{what} is nested {depth} levels deep, over the limit of {MAX_DEPTH}", errno.EPROTO
        )
    return text


def nesting(value: Any) -> int:
    """Levels of objects and arrays in a JSON value (an empty object is 1), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def locate(directory: kvsdir.ConduitDir, deadline: float) -> Location:
    """The datastore's location; waits for one to be published, until the deadline.

    Raises:
        ConduitError: none was published by the deadline.
    """
    value = directory.location()
    if value is None:
        watch = directory.watch_location()
        try:
            value = watch.wait_for(max(deadline - time.monotonic(), 0.001)).get()
        except TimeoutError:
            value = None
        finally:
            watch.cancel()
    if not isinstance(value, dict):
        raise ConduitError(
            f"no datastore has published its location (KVS key {directory.location_key}); "
            + how_to_start(directory.stream)
        )
    return Location(int(value["rank"]), int(value["jobid"]), str(value["host"]))


def failure(exc: OSError, location: Location, stream: str) -> tuple[int, str, str]:
    """A failed put request's errno (ETIMEDOUT: no answer), Flux's reason, and, for a
    retryable one, the problem to report if its timeout passes."""
    code = errno.ETIMEDOUT if isinstance(exc, TimeoutError) else exc.errno or errno.EIO
    reason = exc.strerror or os.strerror(code)
    if code == errno.ENOSYS:
        return code, reason, f"{location} has no conduit (it ended?); {how_to_start(stream)}"
    return code, reason, f"{location}: {reason}"


def request_payload(chunk: list[dict[str, Any]]) -> dict[str, Any]:
    """The conduit.put payload of one request: a packet, or a batch of them."""
    return chunk[0] if len(chunk) == 1 else {"packets": chunk}


class Conduit:
    """A producer of packets for the conduit's datastore.

    Args:
        h: a Flux handle (default: a new one on the enclosing instance).
        producer: the name that makes retried puts recognisable (default:
            default_producer()).  Two clients must not share one.
        timeout: the default for how long a put may take, retries included.
        stream: the stream to put to (default: the default stream); a
            packet put to one stream never lands in another.
        batch: for send(): at most this many packets per request.
        linger: for send(): at most this many seconds a packet waits for
            its batch to fill before it leaves.
        max_pending: for send(): at most this many packets sent and not
            yet stored or failed; past it a send waits (up to its timeout).

    Raises:
        ConduitError: a setting is out of range, or there is no Flux to connect to.

    It starts the thread that send() uses (conduit.sender), with a Flux
    handle of its own on the same broker.
    """

    def __init__(
        self,
        h: flux.Flux | None = None,
        producer: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        stream: str = DEFAULT_STREAM,
        *,
        batch: int = DEFAULT_BATCH,
        linger: float = DEFAULT_LINGER,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        from conduit.sender import Sender  # sender.py builds on this module

        self._sender: Sender = Sender(self, batch, linger, max_pending)
        self.h = h or connect()
        self.producer = producer or default_producer()
        self.timeout = timeout
        self.location: Location | None = None
        self.stream = stream
        self.topic = topic(stream, "put")  # the put service of the stream's module
        self._dir = kvsdir.ConduitDir(self.h, stream)
        self._seq = itertools.count(1)
        self._sender.start(None if h is None else self.h.attr_get("local-uri"))

    def put(self, data: Mapping[str, Any], timeout: float | None = None) -> Receipt:
        """Put one JSON object and wait until the datastore has stored it.

        Raises:
            ConduitError: refused (errno EPROTO, EMSGSIZE, ...), or not
                stored within the timeout (ETIMEDOUT).
        """
        payload = {"data": encode(data), "producer": self.producer, "seq": next(self._seq)}
        [response] = self._send([payload], batch=1, in_flight=1, timeout=timeout)
        return Receipt(response["id"], response["duplicate"])

    def put_many(
        self,
        items: Iterable[Mapping[str, Any]],
        batch: int = DEFAULT_BATCH,
        in_flight: int = DEFAULT_IN_FLIGHT,
        timeout: float | None = None,
    ) -> list[Receipt]:
        """Put many JSON objects, `batch` per request, `in_flight` requests at once.

        Every object is checked before anything is sent.  Returns one
        receipt per object, in order, once all are stored.

        Raises:
            ConduitError: an object is not sendable (nothing was sent), a
                batch was refused, or not all were stored within the timeout.
        """
        if not 1 <= batch <= MAX_PACKETS_PER_PUT:
            raise ConduitError(f"batch must be 1 to {MAX_PACKETS_PER_PUT} packets, not {batch}")
        if in_flight < 1:
            raise ConduitError(f"in_flight must be at least 1, not {in_flight}")
        texts = [encode(data, f"packet {i}") for i, data in enumerate(items, start=1)]
        payloads = [{"data": t, "producer": self.producer, "seq": next(self._seq)} for t in texts]
        responses = self._send(payloads, batch, in_flight, timeout)
        return [Receipt(r["id"], r["duplicate"]) for r in responses]

    def send(self, data: Mapping[str, Any], timeout: float | None = None) -> Sent:
        """Send one JSON object without waiting for it to be stored.

        It is batched with the packets sent after it and leaves within
        `linger` seconds.  Returns its future (conduit.sender.Sent):
        result() is its Receipt, or raises the ConduitError that kept it
        from being stored within `timeout` seconds of this call.

        Raises:
            ConduitError: the object is not sendable; `max_pending` packets
                stayed pending for the whole timeout (ETIMEDOUT; this one
                was not sent); or the client is closed.
        """
        return self._sender.send(encode(data), self.timeout if timeout is None else timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every packet sent so far is stored or has failed.

        Args:
            timeout: give up waiting after this many seconds (default: wait
                until each packet's own timeout has passed).

        Raises:
            ConduitError: how many packets sent since the last flush failed,
                and why; or some were still pending after `timeout`.
        """
        self._sender.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop sending; send() raises after this.

        Raises:
            ConduitError: as flush() does.
        """
        self._sender.close(timeout)

    @property
    def send_stats(self) -> SenderStats:
        """Counters of send(): sent, pending, peak pending, stored, duplicates, failed."""
        return self._sender.stats()

    def __enter__(self) -> Conduit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # the body's exception says more; close without hiding it
            with contextlib.suppress(ConduitError):
                self.close()

    def _send(
        self,
        payloads: list[dict[str, Any]],
        batch: int,
        in_flight: int,
        timeout: float | None,
    ) -> list[dict[str, Any]]:
        """Send the payloads until each is acknowledged; their responses, in order."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        chunks = [payloads[i : i + batch] for i in range(0, len(payloads), batch)]
        responses: list[list[dict[str, Any]]] = [[] for _ in chunks]
        todo = deque(range(len(chunks)))
        pending: deque[tuple[int, Any]] = deque()  # (chunk, its request), oldest first
        location: Location | None = None  # where to send; None: look it up again
        backoff = 0.05
        problem = ""  # why the last try failed, for the timeout's message
        while todo or pending:
            if location is None:
                if problem:
                    self._pause(backoff, deadline)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                try:
                    location = self._locate(deadline)
                except ConduitError as exc:
                    problem = str(exc)
                    if time.monotonic() >= deadline:
                        break
                    continue
            while todo and len(pending) < in_flight:
                k = todo.popleft()
                pending.append((k, self._rpc(chunks[k], location.rank)))
            k, future = pending.popleft()
            try:
                wait = min(max(deadline - time.monotonic(), 0.001), REQUEST_TIMEOUT)
                answer = future.wait_for(wait).get()
            except OSError as exc:  # TimeoutError too: nothing answered in time
                code, reason, problem = failure(exc, location, self.stream)
                if code not in RETRYABLE_ERRNOS:
                    stored = sum(len(r) for r in responses)
                    raise ConduitError(
                        f"{location} refused {self._which(chunks, k)}: {reason}"
                        + (f" ({stored} packets were stored before)" if stored else ""),
                        code,
                    ) from None
                todo.appendleft(k)  # sent again, same seqs: stored once whatever happened
                location = None
                if time.monotonic() >= deadline:
                    break
                continue
            responses[k] = answer.get("packets", [answer])
            backoff, problem = 0.05, ""
        if todo or pending:
            unstored = sum(len(chunks[k]) for k in todo) + sum(len(chunks[k]) for k, _ in pending)
            which = f" {unstored} of {len(payloads)} packets" if len(payloads) > 1 else ""
            raise ConduitError(
                f"no datastore acknowledged{which} within {limit:g}s: {problem}", errno.ETIMEDOUT
            )
        return [r for chunk in responses for r in chunk]

    def _locate(self, deadline: float) -> Location:
        """The datastore's location; waits for one to be published, until the deadline."""
        self.location = locate(self._dir, deadline)
        return self.location

    def _rpc(self, chunk: list[dict[str, Any]], rank: int) -> Any:
        return self.h.rpc(self.topic, request_payload(chunk), nodeid=rank)

    @staticmethod
    def _which(chunks: list[list[dict[str, Any]]], k: int) -> str:
        if len(chunks) == 1 and len(chunks[0]) == 1:
            return "the packet"
        first = sum(len(c) for c in chunks[:k]) + 1
        return f"packets {first}-{first + len(chunks[k]) - 1}"

    @staticmethod
    def _pause(seconds: float, deadline: float) -> None:
        time.sleep(max(min(seconds, deadline - time.monotonic()), 0))
