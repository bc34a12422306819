"""The datastore's state: the merged store and the packets behind it.

A record is one stored packet: {"data": {...}} plus "producer" and "seq"
when the sender numbered it.  Records are kept in the KVS as JSON lines,
so a restarted datastore rebuilds the same store and knows which
(producer, seq) pairs it already holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

Record = dict[str, Any]


class Store:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.count = 0
        self._seen: set[tuple[str, int]] = set()

    def claim(self, packet: Record) -> bool:
        """Reserve a packet's (producer, seq); False if already held."""
        producer = packet.get("producer")
        if producer is None:
            return True
        key = (producer, packet["seq"])
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def apply(self, record: Record) -> None:
        self.data.update(record["data"])
        self.count += 1

    def render(self) -> str:
        return json.dumps(self.data)

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> Store:
        store = cls()
        for record in records:
            store.claim(record)
            store.apply(record)
        return store


def record_of(packet: Record) -> Record:
    """The part of a packet from the module that is worth keeping."""
    record = {"data": packet["data"]}
    if "producer" in packet:
        record["producer"] = packet["producer"]
        record["seq"] = packet["seq"]
    return record


def encode_records(records: Iterable[Record]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)


def decode_records(blob: bytes) -> list[Record]:
    """Parse the KVS log; a line that is not a record is an error."""
    records = []
    for number, line in enumerate(blob.splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("data"), dict):
            raise ValueError(f"line {number} of the store log is not a record")
        records.append(record)
    return records
