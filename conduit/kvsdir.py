"""The conduit's KVS directory: every read and write of it lives here.

Layout, in the instance's primary namespace (a job's own KVS calls
default to its job namespace, so every call names the namespace):

    conduit.datastore          {"rank", "jobid", "host"} of the live datastore
    conduit.store.<segment>    the store's log: batches as JSON lines
    conduit.computes.<name>    one key per compute job that checked in

The log is a directory of segments 0, 1, ...; each holds the batches of
up to SEGMENT_COMMITS commits.  Appending to one ever-growing key would
make each commit cost more than the last.
"""

from __future__ import annotations

from typing import Any

import flux
import flux.constants
import flux.kvs
from flux.core.inner import ffi

from conduit.store import Store

NAMESPACE = "primary"
LOCATION = "conduit.datastore"
STORE = "conduit.store"
COMPUTES = "conduit.computes"
SEGMENT_COMMITS = 64


class ConduitDir:
    """The conduit's KVS directory, through one Flux handle."""

    def __init__(self, h: flux.Flux) -> None:
        self.h = h

    # Where the datastore is.
    def location(self) -> dict[str, Any] | None:
        """The published {"rank", "jobid", "host"} of the datastore, if any."""
        try:
            value = flux.kvs.get(self.h, LOCATION, namespace=NAMESPACE)
        except FileNotFoundError:
            return None
        return value if isinstance(value, dict) else None

    def watch_location(self) -> flux.kvs.KVSWatchFuture:
        """A future that is fulfilled with each new location (waits for the first)."""
        return flux.kvs.kvs_watch_async(
            self.h, LOCATION, namespace=NAMESPACE, waitcreate=True, uniq=True
        )

    def publish_location(self, rank: int, jobid: int, host: str) -> None:
        with self._txn() as txn:
            txn.put(LOCATION, {"rank": rank, "jobid": jobid, "host": host})

    # The store's log.
    def load_store(self) -> tuple[Store, list[int]]:
        """The durable store, replayed from the log, and the log's segment numbers."""
        segments = self._segments()
        blob = b"".join(self._get_raw(f"{STORE}.{n}") for n in segments)
        return Store.from_log(blob), segments

    def append_async(self, segment: int, blob: bytes) -> flux.Future:
        """Append `blob` to log segment `segment`; the commit's future."""
        txn = self._txn()
        key = f"{STORE}.{segment}"
        flux.kvs.RAW.flux_kvs_txn_put_raw(
            txn.txn, flux.constants.FLUX_KVS_APPEND, key, blob, len(blob)
        )
        return txn.commit_async()

    def discard_store(self) -> None:
        with self._txn() as txn:
            txn.unlink(STORE)

    def clear_finished(self, jobid: int) -> None:
        """A finished datastore's cleanup: its log, the check-ins, its location."""
        txn = self._txn()
        txn.unlink(STORE)
        txn.unlink(COMPUTES)
        location = self.location()
        if location is not None and location.get("jobid") == jobid:
            txn.unlink(LOCATION)
        txn.commit()

    # Computes.
    def check_in(self, name: str, info: dict[str, Any]) -> None:
        with self._txn() as txn:
            txn.put(f"{COMPUTES}.{name}", info)

    def _txn(self) -> flux.kvs.KVSTxn:
        return flux.kvs.KVSTxn(self.h, namespace=NAMESPACE)

    def _segments(self) -> list[int]:
        try:
            names = flux.kvs.get_dir(self.h, STORE, namespace=NAMESPACE).keys()
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names)

    def _get_raw(self, key: str) -> bytes:
        """A value as bytes (the log is not one JSON value, so kvs.get cannot read it)."""
        future = flux.kvs.RAW.flux_kvs_lookup(self.h, NAMESPACE, 0, key)
        data = ffi.new("const void *[1]")
        size = ffi.new("size_t [1]")
        try:
            flux.kvs.RAW.flux_kvs_lookup_get_raw(future, data, size)
            return bytes(ffi.buffer(data[0], size[0])) if size[0] else b""
        finally:
            flux.kvs.RAW.flux_future_destroy(future)
