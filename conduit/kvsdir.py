"""The conduit's KVS directory: where the datastore is, and the store's log."""

from __future__ import annotations

from typing import Any

import flux
import flux.kvs
from flux.core.inner import ffi

from conduit.protocol import KVS_LOCATION, KVS_NAMESPACE, KVS_STORE
from conduit.store import Store


def location(h: flux.Flux) -> dict[str, Any] | None:
    """The published {"rank", "jobid", "host"} of the datastore, if any."""
    try:
        value = flux.kvs.get(h, KVS_LOCATION, namespace=KVS_NAMESPACE)
    except FileNotFoundError:
        return None
    return value if isinstance(value, dict) else None


def load_store(h: flux.Flux) -> tuple[Store, list[str]]:
    """The durable store, replayed from the log, and the log's segment keys."""
    segments = log_segments(h)
    return Store.from_log(b"".join(get_raw(h, k) for k in segments)), segments


def log_segments(h: flux.Flux) -> list[str]:
    """The keys of the store's log segments, in order."""
    try:
        names = list(flux.kvs.get_dir(h, KVS_STORE, namespace=KVS_NAMESPACE).keys())
    except FileNotFoundError:
        return []
    return [f"{KVS_STORE}.{n}" for n in sorted(names, key=int)]


def get_raw(h: flux.Flux, key: str) -> bytes:
    """A KVS value as bytes; FileNotFoundError if there is no such key."""
    future = flux.kvs.RAW.flux_kvs_lookup(h, KVS_NAMESPACE, 0, key)
    data = ffi.new("const void *[1]")
    size = ffi.new("size_t [1]")
    try:
        flux.kvs.RAW.flux_kvs_lookup_get_raw(future, data, size)
        return bytes(ffi.buffer(data[0], size[0])) if size[0] else b""
    finally:
        flux.kvs.RAW.flux_future_destroy(future)
