"""The store and its KVS log, without Flux."""

from __future__ import annotations

import json

import pytest

from conduit.store import Store, log_line, log_packets


def packet(
    pid: int, data: dict[str, object], producer: str = "", seq: int = 0
) -> dict[str, object]:
    p: dict[str, object] = {"id": pid, "data": data}
    if producer:
        p.update(producer=producer, seq=seq)
    return p


def batch(*packets: dict[str, object]) -> bytes:
    return log_line(json.dumps({"packets": list(packets)}))


def test_numbered_packets_are_claimed_once() -> None:
    store = Store()
    assert store.claim(packet(1, {"a": 1}, "p", 1))
    assert not store.claim(packet(2, {"a": 1}, "p", 1))
    assert store.claim(packet(3, {"b": 1}, "p", 2))
    assert store.claim(packet(4, {"c": 1}, "q", 1))


def test_unnumbered_packets_are_always_new() -> None:
    store = Store()
    assert store.claim(packet(1, {"a": 1}))
    assert store.claim(packet(2, {"a": 1}))


def test_replay_rebuilds_store_without_test_packets_or_duplicates() -> None:
    log = (
        batch(packet(0, {"test": 101}), packet(1, {"a": 1}, "p", 1))
        + batch(packet(2, {"b": [1, 2]}), packet(3, {"a": 2}, "p", 1))  # a retried put
        + batch(packet(0, {"test": 101}), packet(1, {"c": 3}, "p", 2))  # the next datastore
    )
    store = Store.from_log(log)
    assert store.data == {"a": 1, "b": [1, 2], "c": 3}
    assert store.count == 3
    assert not store.claim(packet(9, {"a": 1}, "p", 1))
    assert [p["id"] for p in log_packets(log)] == [1, 2, 3, 1]


def test_test_packet_is_shown_first_but_not_stored() -> None:
    store = Store()
    store.apply(packet(1, {"a": 1}))
    store.apply(packet(0, {"test": 101}))
    assert (store.data, store.count) == ({"a": 1}, 1)
    assert store.render() == '{"test": 101, "a": 1}'


def test_corrupt_log_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="line 2"):
        Store.from_log(batch(packet(1, {})) + b"[1]\n")


def test_render_is_json() -> None:
    store = Store()
    store.apply(packet(1, {"1700000000-fABC": "os.time"}))
    assert store.render() == '{"1700000000-fABC": "os.time"}'
