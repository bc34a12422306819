"""The store and its KVS log, without Flux."""

from __future__ import annotations

import pytest

from conduit.store import Store, decode_records, encode_records, record_of


def packet(
    pid: int, data: dict[str, object], producer: str | None = None, seq: int = 0
) -> dict[str, object]:
    p: dict[str, object] = {"id": pid, "data": data}
    if producer:
        p.update(producer=producer, seq=seq)
    return p


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


def test_log_round_trip_rebuilds_store_and_claims() -> None:
    records = [record_of(packet(1, {"a": 1}, "p", 1)), record_of(packet(2, {"b": [1, 2]}))]
    blob = encode_records(records)
    assert blob.count(b"\n") == 2
    store = Store.from_records(decode_records(blob))
    assert store.data == {"a": 1, "b": [1, 2]}
    assert store.count == 2
    assert not store.claim(packet(9, {"a": 1}, "p", 1))


def test_record_drops_the_module_id() -> None:
    assert record_of(packet(7, {"k": "v"}, "p", 3)) == {
        "data": {"k": "v"},
        "producer": "p",
        "seq": 3,
    }


def test_corrupt_log_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="line 2"):
        decode_records(b'{"data":{}}\n[1]\n')


def test_render_is_json() -> None:
    store = Store.from_records([{"data": {"1700000000-fABC": "os.time"}}])
    assert store.render() == '{"1700000000-fABC": "os.time"}'
