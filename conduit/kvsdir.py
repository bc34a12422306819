"""The conduit's KVS directory: every read and write of it lives here.

Layout, in the instance's primary namespace (a job's own KVS calls
default to its job namespace, so every call names the namespace).  Each
stream has a directory of its own, ROOT: `conduit` for the default
stream (today's keys), `conduit.streams.<name>` for a named one:

    ROOT.datastore          {"rank", "jobid", "host", "resumed"} of the live datastore
    ROOT.log.<dir>.<n>      the stream's log, segment dir * SEGMENTS_PER_DIR + n:
                            batches as JSON lines; a segment that is not the
                            last ends with {"next": N}
    ROOT.finished           {"jobid", "stored", "last_id"} once a datastore finished
    ROOT.computes.<name>    one key per compute job that checked in

The log's segments 0, 1, ... each hold the batches of up to
SEGMENT_COMMITS commits, SEGMENTS_PER_DIR of them to a directory.  A
commit rewrites the key it changes and every directory above it, each
directory whole, with the treeobjs of all its entries inline (a segment's
names its blobs, about 3 KB): appending to one ever-growing key, or
keeping every segment in one directory (1 ms a commit at 0 segments, 121
ms at 1,000, docs/performance.md), would make each commit cost more than
the last.  A consumer reads one segment at a time (conduit/follow.py).

A finished stream's log stays, for consumers, until the next datastore
of that stream replaces it, `--fresh` discards it, or `conduit delete`
removes the stream: at most one log per stream name.
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections import deque
from collections.abc import Callable
from typing import Any

import flux
import flux.constants
import flux.future
import flux.kvs
from flux.core.inner import ffi, raw

from conduit.errors import ConduitError
from conduit.protocol import (
    DEFAULT_STREAM,
    SEGMENT_BYTES,
    SEGMENT_COMMITS,
    SEGMENTS_PER_DIR,
    check_stream,
    segment_path,
)
from conduit.store import Store, next_line

NAMESPACE = "primary"
STREAMS = "conduit.streams"
LOCATION = "conduit.datastore"  # the default stream's keys
LOG = "conduit.log"
COMPUTES = "conduit.computes"
__all__ = [
    "SEGMENT_BYTES",
    "SEGMENT_COMMITS",
    "BlobStore",
    "BlobLoad",
    "ConduitDir",
    "SegmentWatch",
    "end_watch",
    "list_streams",
    "root",
]


class BlobStore(flux.future.Future):
    """A content.store request for one blob; blobref() names the stored blob."""

    def __init__(self, h: flux.Flux, blob: bytes, hash_name: str) -> None:
        self.flux_handle = h  # outlives the request
        self.hash_name = hash_name
        future = raw.flux_rpc_raw(
            h.handle, b"content.store", blob, len(blob), flux.constants.FLUX_NODEID_ANY, 0
        )
        super().__init__(future)

    def blobref(self) -> str:
        """The blob's reference, "<hash name>-<hex digest>"; OSError if it was not stored."""
        data = ffi.new("const void *[1]")
        size = ffi.new("size_t [1]")
        raw.flux_rpc_get_raw(self.pimpl.handle, data, size)
        return f"{self.hash_name}-{bytes(ffi.buffer(data[0], size[0])).hex()}"


class BlobLoad(flux.future.Future):
    """A content.load request for the blob `blobref` names; data() gives its bytes."""

    def __init__(self, h: flux.Flux, blobref: str) -> None:
        self.flux_handle = h  # outlives the request
        digest = bytes.fromhex(blobref.partition("-")[2])
        future = raw.flux_rpc_raw(
            h.handle, b"content.load", digest, len(digest), flux.constants.FLUX_NODEID_ANY, 0
        )
        super().__init__(future)

    def data(self) -> bytes:
        """The blob; OSError if it cannot be loaded."""
        data = ffi.new("const void *[1]")
        size = ffi.new("size_t [1]")
        raw.flux_rpc_get_raw(self.pimpl.handle, data, size)
        return bytes(ffi.buffer(data[0], size[0]))


class TreeobjWatch(flux.kvs.WatchImplementation):
    """A watch of a key's treeobj: get() gives it as a dict, None at the end."""

    def watch_get(self, future: Any) -> dict[str, Any]:
        treeobj = ffi.new("const char *[1]")
        flux.kvs.RAW.flux_kvs_lookup_get_treeobj(future, treeobj)
        return json.loads(ffi.string(treeobj[0]))

    def watch_cancel(self, future: Any) -> None:
        flux.kvs.RAW.flux_kvs_lookup_cancel(future)


def end_watch(watch: Any) -> None:
    """Stop a KVS watch, and cancel it in kvs-watch if it is live (best effort: the
    connection may be gone)."""
    watch.stop()
    if watch.needs_cancel:
        watch.needs_cancel = False  # once, even if this cancel cannot be sent
        with contextlib.suppress(OSError):
            watch.watch_cancel(watch.pimpl)


class SegmentWatch:
    """A log segment as it grows: on_data(bytes) gets each commit's bytes once, in order.

    It watches the segment's treeobj, a valref naming one blob a commit
    (write_segment_async), and loads each new blob raw from the content
    store; a treeobj that does not start with the blobs read so far is
    another log.  A WATCH_APPEND of the key gives the same bytes
    base64-encoded inside JSON, which kvs-watch encodes and a consumer
    decodes: a third of a fast consumer's time (docs/performance.md).  It
    waits for the segment to exist.  on_error(OSError) is called once if the
    segment cannot be read: ENOENT, it was removed; EINVAL, it was replaced.
    """

    def __init__(
        self,
        h: flux.Flux,
        key: str,
        on_data: Callable[[bytes], None],
        on_error: Callable[[OSError], None],
    ) -> None:
        self.h = h
        self.key = key
        self.on_data = on_data
        self.on_error = on_error
        self.blobrefs: list[str] = []  # the segment's blobs asked for so far
        self.loads: deque[BlobLoad] = deque()  # in the segment's order
        self.stopped = False
        flags = (
            flux.constants.FLUX_KVS_WATCH
            | flux.constants.FLUX_KVS_WAITCREATE
            | flux.constants.FLUX_KVS_TREEOBJ
        )
        self.watch = TreeobjWatch(flux.kvs.RAW.flux_kvs_lookup(h, NAMESPACE, flags, key))
        self.watch.then(self._on_treeobj)

    def stop(self) -> None:
        self.stopped = True
        end_watch(self.watch)
        self.loads.clear()  # their answers, if any come, are dropped

    def _on_treeobj(self, f: TreeobjWatch) -> None:
        try:
            treeobj = f.get()
        except OSError as exc:
            self._fail(exc)
            return
        if treeobj is None or self.stopped:
            return
        blobrefs = treeobj.get("data") if treeobj.get("type") == "valref" else None
        if not isinstance(blobrefs, list) or blobrefs[: len(self.blobrefs)] != self.blobrefs:
            self._fail(OSError(errno.EINVAL, f"{self.key} was replaced while it was read"))
            return
        for blobref in blobrefs[len(self.blobrefs) :]:
            load = BlobLoad(self.h, blobref)
            load.then(self._on_load)
            self.loads.append(load)
        self.blobrefs = blobrefs

    def _on_load(self, _: BlobLoad) -> None:
        while self.loads and self.loads[0].is_ready() and not self.stopped:
            load = self.loads.popleft()
            try:
                data = load.data()
            except OSError as exc:
                self._fail(exc)
                return
            self.on_data(data)

    def _fail(self, exc: OSError) -> None:
        if not self.stopped:
            self.stop()
            self.on_error(exc)


def root(stream: str) -> str:
    """The KVS directory of `stream`."""
    check_stream(stream)
    return "conduit" if stream == DEFAULT_STREAM else f"{STREAMS}.{stream}"


def list_streams(h: flux.Flux) -> list[str]:
    """The streams that have a datastore or a log in the KVS, the default stream first."""
    names = []
    if any(_exists(h, f"conduit.{k}") for k in ("datastore", "log", "finished")):
        names.append(DEFAULT_STREAM)
    with contextlib.suppress(FileNotFoundError):
        names += sorted(flux.kvs.get_dir(h, STREAMS, namespace=NAMESPACE).keys())
    return names


def _exists(h: flux.Flux, key: str) -> bool:
    try:
        flux.kvs.get(h, key, namespace=NAMESPACE)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # a directory, or a value that is not JSON (a log segment)
    return True


class ConduitDir:
    """One stream's KVS directory, through one Flux handle."""

    def __init__(self, h: flux.Flux, stream: str = DEFAULT_STREAM) -> None:
        self.h = h
        self.stream = stream
        self.root = root(stream)
        self.location_key = f"{self.root}.datastore"
        self.log_key = f"{self.root}.log"
        self.finished_key = f"{self.root}.finished"
        self.computes_key = f"{self.root}.computes"
        self._hash_name: str | None = None  # the instance's content.hash, once asked

    # Where the datastore is.
    def location(self) -> dict[str, Any] | None:
        """The published {"rank", "jobid", "host", "resumed"} of the datastore, if any."""
        return self._get_dict(self.location_key)

    def watch_location(self) -> flux.kvs.KVSWatchFuture:
        """A future that is fulfilled with each new location (waits for the first)."""
        return flux.kvs.kvs_watch_async(
            self.h, self.location_key, namespace=NAMESPACE, waitcreate=True, uniq=True
        )

    def publish_location(self, rank: int, jobid: int, host: str, resumed: int) -> None:
        """Where the stream's datastore runs, and how many packets it resumed from the log."""
        location = {"rank": rank, "jobid": jobid, "host": host, "resumed": resumed}
        with self._txn() as txn:
            txn.put(self.location_key, location)

    # The stream's log.
    def load_log(self) -> tuple[Store, list[int]]:
        """The durable store, replayed from the log, and the log's segment numbers."""
        segments = self.segments()
        blob = b"".join(self.segment(n) or b"" for n in segments)
        return Store.from_log(blob), segments

    def store_blob_async(self, blob: bytes) -> BlobStore:
        """Put `blob` in the content store, for write_segment_async."""
        if self._hash_name is None:
            self._hash_name = str(self.h.attr_get("content.hash"))
        return BlobStore(self.h, blob, self._hash_name)

    def write_segment_async(
        self, segment: int, blobrefs: list[str], closes: int | None = None
    ) -> flux.Future:
        """Commit log segment `segment` as the content blobs `blobrefs`, in order.

        The segment's key is a valref treeobj naming the blobs, which is
        what the KVS makes of an appended key itself; giving it the blobs'
        references, rather than the bytes to append, spares the commit the
        base64 and JSON round trip of the whole batch on both sides and
        the KVS a second hash of it (docs/performance.md).  `blobrefs` only
        grows from one commit of a segment to the next, so a consumer's
        WATCH_APPEND of the key sees each commit's blob once.

        closes: a segment this commit ends, with a line that names the next
        (store.next_line()), in the same commit: a consumer reading that
        segment then knows where to go on.
        """
        txn = self._txn()
        if closes is not None:
            line = next_line(segment)
            flux.kvs.RAW.flux_kvs_txn_put_raw(
                txn.txn, flux.constants.FLUX_KVS_APPEND, self.segment_key(closes), line, len(line)
            )
        valref = json.dumps({"ver": 1, "type": "valref", "data": blobrefs})
        flux.kvs.RAW.flux_kvs_txn_put_treeobj(txn.txn, 0, self.segment_key(segment), valref)
        return txn.commit_async()

    def segment_key(self, n: int) -> str:
        """The KVS key of log segment `n`."""
        return f"{self.log_key}.{segment_path(n)}"

    def segment_dirs(self) -> list[str]:
        """The names of the log's directories of segments (none: no log).

        Raises:
            ConduitError: the log is in the layout of an older conduit (its
                segments straight under ROOT.log).
        """
        try:
            log = flux.kvs.get_dir(self.h, self.log_key, namespace=NAMESPACE)
        except FileNotFoundError:
            return []
        old_layout, directories = log.list_all()
        if old_layout:
            raise ConduitError(
                f"stream {self.stream}: the log at KVS {self.log_key} was written by an older "
                "conduit, one segment a key; start the stream afresh with --fresh"
            )
        return directories

    def segments(self) -> list[int]:
        """The log's segment numbers, in order (raises as segment_dirs)."""
        numbers = []
        for d in self.segment_dirs():
            segments = flux.kvs.get_dir(self.h, f"{self.log_key}.{d}", namespace=NAMESPACE)
            numbers += [int(d) * SEGMENTS_PER_DIR + int(n) for n in segments.files()]
        return sorted(numbers)

    def segment(self, n: int) -> bytes | None:
        """Log segment `n` as bytes, None if there is none (the log is not one JSON value)."""
        future = flux.kvs.RAW.flux_kvs_lookup(self.h, NAMESPACE, 0, self.segment_key(n))
        data = ffi.new("const void *[1]")
        size = ffi.new("size_t [1]")
        try:
            flux.kvs.RAW.flux_kvs_lookup_get_raw(future, data, size)
            return bytes(ffi.buffer(data[0], size[0])) if size[0] else b""
        except FileNotFoundError:
            return None
        finally:
            flux.kvs.RAW.flux_future_destroy(future)

    def watch_segment(
        self, n: int, on_data: Callable[[bytes], None], on_error: Callable[[OSError], None]
    ) -> SegmentWatch:
        """Log segment `n`'s bytes as it grows, once it exists (SegmentWatch)."""
        return SegmentWatch(self.h, self.segment_key(n), on_data, on_error)

    def watch_finished(self) -> flux.kvs.KVSWatchFuture:
        """A watch of the finished mark that waits for it to exist."""
        return flux.kvs.kvs_watch_async(
            self.h, self.finished_key, namespace=NAMESPACE, waitcreate=True
        )

    def discard_log(self) -> None:
        """Start the stream afresh: no log, no finished mark."""
        with self._txn() as txn:
            self._unlink_log(txn)
            txn.unlink(self.finished_key)

    def _unlink_log(self, txn: flux.kvs.KVSTxn) -> None:
        # Each segment by name: kvs-watch tells a watcher of a key only of
        # commits that name that key, not of its directory's removal.
        with contextlib.suppress(ConduitError):  # an older layout's: removed whole
            for n in self.segments():
                txn.unlink(self.segment_key(n))
        txn.unlink(self.log_key)

    # The end of a stream.
    def finished(self) -> dict[str, Any] | None:
        """{"jobid", "stored", "last_id"} if the stream's datastore finished."""
        return self._get_dict(self.finished_key)

    def finish(self, jobid: int, stored: int, last_id: int) -> None:
        """Mark the stream finished; drop the check-ins and this datastore's location.

        The log stays, for consumers, until the stream is replaced or deleted.
        """
        txn = self._txn()
        txn.put(self.finished_key, {"jobid": jobid, "stored": stored, "last_id": last_id})
        txn.unlink(self.computes_key)
        location = self.location()
        if location is not None and location.get("jobid") == jobid:
            txn.unlink(self.location_key)
        txn.commit()

    def delete(self) -> None:
        """Remove the stream: its log, location, finished mark and check-ins."""
        with self._txn() as txn:
            self._unlink_log(txn)
            for key in (self.location_key, self.finished_key, self.computes_key):
                txn.unlink(key)
            if self.stream != DEFAULT_STREAM:
                txn.unlink(self.root)

    # Computes.
    def check_in(self, name: str, info: dict[str, Any]) -> None:
        with self._txn() as txn:
            txn.put(f"{self.computes_key}.{name}", info)

    def _txn(self) -> flux.kvs.KVSTxn:
        return flux.kvs.KVSTxn(self.h, namespace=NAMESPACE)

    def _get_dict(self, key: str) -> dict[str, Any] | None:
        try:
            value = flux.kvs.get(self.h, key, namespace=NAMESPACE)
        except FileNotFoundError:
            return None
        return value if isinstance(value, dict) else None
