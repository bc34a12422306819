"""The datastore's state: the store (every packet merged) and the log behind it.

The stream's log in the KVS (conduit.log, conduit/kvsdir.py) holds the
batches exactly as the module sent them, one JSON line per batch:
{"first", "last", "packets": [{"id", "data", "producer"?, "seq"?}, ...]}.
Appending the module's own text costs the datastore no re-encoding.  A
line may repeat a (producer, seq) that an earlier line holds (a retried
put); replaying the log keeps the first, as the live datastore did, so a
restarted datastore rebuilds the same store.  A commit that holds such
repeats starts with a line {"duplicates": [ids]} naming them, so that a
consumer can skip them without remembering every (producer, seq).  A
segment that is not the last ends with {"next": N}.  Packet ids grow
along the log, across datastore restarts.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Packet = dict[str, Any]
# The module writes each batch's id range first: a batch the datastore
# cannot decode can still be refused by its ids, and a consumer skips a
# line it has read already without decoding it.
BATCH_RANGE = re.compile(r'\{"first":(\d+),"last":(\d+),')
TEST_ID = 0  # the module's own {"test": 101} packet, sent at each attach


class Store:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}  # every stored packet merged, in order
        self.count = 0  # packets stored
        self.banner: dict[str, Any] = {}  # the test packet, shown first, never stored
        self.last_id = TEST_ID  # the highest packet id in the log
        self._seen: set[tuple[str, int]] = set()

    def claim(self, packet: Packet) -> bool:
        """Reserve a packet's (producer, seq); False if the store has it."""
        self.last_id = max(self.last_id, packet["id"])
        producer = packet.get("producer")
        if producer is None:
            return True
        key = (producer, packet["seq"])
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def apply(self, packet: Packet) -> None:
        if packet["id"] == TEST_ID:
            self.banner.update(packet["data"])
        else:
            self.data.update(packet["data"])
            self.count += 1

    def render(self) -> str:
        """The store as the original printed it: the test packet, then the rest."""
        return json.dumps({**self.banner, **self.data})

    def save(self, path: str | Path) -> None:
        """Write the stored packets, merged, as JSON to `path`, atomically."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~current_umask())  # as open() would, not mkstemp's 0600
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def from_log(cls, blob: bytes) -> Store:
        store = cls()
        for packet in log_packets(blob):
            if store.claim(packet):
                store.apply(packet)
        return store


def log_line(batch_text: str) -> bytes:
    return batch_text.encode() + b"\n"


def next_line(segment: int) -> bytes:
    """The line that ends a log segment: where the log goes on."""
    return json.dumps({"next": segment}).encode() + b"\n"


def duplicates_line(ids: list[int]) -> bytes:
    """The line that names a commit's repeated packets, written before its batches."""
    return json.dumps({"duplicates": ids}, separators=(",", ":")).encode() + b"\n"


def log_packets(blob: bytes) -> Iterator[Packet]:
    """The stored packets of a KVS log, in order (test packets left out)."""
    for number, line in enumerate(blob.splitlines(), start=1):
        if not line.strip():
            continue
        batch = json.loads(line)
        if isinstance(batch, dict) and ("duplicates" in batch or "next" in batch):
            continue  # replaying dedupes by (producer, seq) anyway; segments are joined
        if not isinstance(batch, dict) or not isinstance(batch.get("packets"), list):
            raise ValueError(f"line {number} of the store log is not a batch")
        for packet in batch["packets"]:
            if packet.get("id") != TEST_ID:
                yield packet


def current_umask() -> int:
    """This process's umask (reading it means setting it; it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
