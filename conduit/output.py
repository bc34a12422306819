"""Read what a datastore printed (`flux job attach` output)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

STARTING = "Starting...."
LOADED = "Module was loaded successfully..."
INITIALIZED = "finished initialize..."
RUNNING = "starting run()"
WAITING = "Waiting for a packet"
BYE = "Bye bye!"
FINISHED = "run finished..."
RESUMED_PREFIX = "Resumed "


@dataclass
class DatastoreOutput:
    lines: list[str]
    stores: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_store(self) -> dict[str, Any]:
        return self.stores[-1] if self.stores else {}

    @property
    def finished(self) -> bool:
        return BYE in self.lines and self.lines[-1:] == [FINISHED]

    @property
    def waits(self) -> int:
        return self.lines.count(WAITING)


def parse(text: str) -> DatastoreOutput:
    """Split attach output into status lines and the stores printed."""
    out = DatastoreOutput(lines=[line for line in text.splitlines() if line.strip()])
    for line in out.lines:
        if line.startswith("{"):
            store = json.loads(line)
            if isinstance(store, dict):
                out.stores.append(store)
    return out
