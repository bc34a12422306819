"""What a datastore prints (`flux job attach` shows it), and how to read it back.

The original example printed the whole store after each packet.  That
stays while the store is small, so the demo looks as it always did; but
its cost grows with the square of the stream, so past STORE_LINE_LIMIT
bytes the datastore says so in one line and prints each packet instead.
Every store and packet line is JSON; status lines are the fixed strings
below.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
PACKETS_PREFIX = "Printing one line per packet"
SUMMARY_PREFIX = "Summary: "

PRINT_MODES = ("auto", "store", "packets", "none")
STORE_LINE_LIMIT = 8192  # bytes of a store line, past which `auto` prints packets


def say(line: str) -> None:
    print(line, flush=True)


class Printer:
    """Prints the store as it grows, in one of PRINT_MODES.

    auto: the whole store after each packet while its line is at most
    STORE_LINE_LIMIT bytes, then one line per packet; store: always the
    whole store; packets: one line per packet; none: nothing per packet.
    """

    def __init__(self, mode: str, write: Callable[[str], None] = say) -> None:
        if mode not in PRINT_MODES:
            raise ValueError(f"print mode must be one of {', '.join(PRINT_MODES)}, not {mode!r}")
        self.mode = mode
        self.write = write
        self.per_packet = mode == "packets"

    def start(self) -> None:
        if self.per_packet:
            self.write(f"{PACKETS_PREFIX} (--print packets)")
        elif self.mode != "none":
            self.write(WAITING)

    def resumed(self, store_line: str) -> None:
        """A store resumed from the log: shown whole, if it is to be shown."""
        if self.mode == "store" or (self.mode == "auto" and not self._switch(store_line)):
            self.write(store_line)

    def stored(self, store_line: Callable[[], str], packet_line: str, more: bool) -> None:
        """A packet was stored; `more`: the datastore waits for another."""
        if self.mode == "none":
            return
        if not self.per_packet:
            line = store_line()
            if self.mode == "store" or not self._switch(line):
                self.write(line)
                if more:
                    self.write(WAITING)
                return
        self.write(packet_line)

    def _switch(self, store_line: str) -> bool:
        """In auto mode, go over to one line per packet once the store is too big to print."""
        if len(store_line) <= STORE_LINE_LIMIT:
            return False
        self.per_packet = True
        self.write(
            f"{PACKETS_PREFIX}: the store is over {STORE_LINE_LIMIT} bytes "
            "(--print store prints it whole each time, --print none nothing)"
        )
        return True


@dataclass
class DatastoreOutput:
    lines: list[str]
    stores: list[dict[str, Any]] = field(default_factory=list)  # whole stores printed
    packets: list[dict[str, Any]] = field(default_factory=list)  # packets printed after them
    summary: dict[str, Any] | None = None

    @property
    def final_store(self) -> dict[str, Any]:
        """The last store printed, with every packet printed after it applied."""
        store = dict(self.stores[-1]) if self.stores else {}
        for packet in self.packets:
            store.update(packet)
        return store

    @property
    def finished(self) -> bool:
        return BYE in self.lines and self.lines[-1:] == [FINISHED]

    @property
    def waits(self) -> int:
        return self.lines.count(WAITING)


def parse(text: str) -> DatastoreOutput:
    """Split attach output into status lines, the stores and the packets printed."""
    out = DatastoreOutput(lines=[line for line in text.splitlines() if line.strip()])
    per_packet = False
    for line in out.lines:
        if line.startswith(PACKETS_PREFIX):
            per_packet = True
        elif line.startswith(SUMMARY_PREFIX):
            out.summary = json.loads(line[len(SUMMARY_PREFIX) :])
        elif line.startswith("{"):
            value = json.loads(line)
            if isinstance(value, dict):
                (out.packets if per_packet else out.stores).append(value)
    return out
