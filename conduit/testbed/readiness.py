"""When the testbed is ready: every started broker online, every started node's resources up.

One look at the instance (`Probe`) is a `flux python` run in node0 that
asks rank 0 which brokers are online and which ranks the scheduler has
down; `wait_ready` repeats it until the nodes asked for are all there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conduit.testbed.errors import TestbedError
from conduit.testbed.waiting import wait_until

if TYPE_CHECKING:
    from conduit.testbed.compose import Compose

# Run in node0 by `flux python`: which brokers are online, which ranks the
# scheduler has down (what `flux resource list` shows), the instance size.
PROBE = """\
import json, flux
from flux.resource import ResourceSet
h = flux.Flux()
online = h.rpc("groups.get", {"name": "broker.online"}, nodeid=0).get()["members"]
status = h.rpc("sched.resource-status", nodeid=0).get()
down = str(ResourceSet(status["down"]).ranks) if status.get("down") else ""
print(json.dumps({"online": online, "down": down, "size": int(h.attr_get("size"))}))
"""


def parse_idset(text: str) -> list[int]:
    """The ranks of an RFC 22 idset such as 0-2,5 ("" is empty)."""
    ranks: list[int] = []
    for part in filter(None, text.strip().split(",")):
        first, _, last = part.partition("-")
        ranks.extend(range(int(first), int(last or first) + 1))
    return ranks


def hostlist(ranks: Iterable[int]) -> str:
    """node[3-5,7] for ranks 3, 4, 5, 7; node3 for rank 3 alone."""
    runs: list[list[int]] = []
    for k in sorted(set(ranks)):
        if runs and runs[-1][1] == k - 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    if not runs:
        return ""
    if runs[0][0] == runs[-1][1]:
        return f"node{runs[0][0]}"
    return "node[" + ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) + "]"


@dataclass
class Probe:
    """One look at the instance from node0."""

    size: int
    online: list[int]
    down: list[int]

    def counts(self, nodes: int) -> tuple[int, int]:
        """(brokers online, nodes whose resources are up) among node0 .. node<nodes-1>."""
        started = range(nodes)
        online = sum(1 for k in started if k in self.online)
        up = sum(1 for k in started if k not in self.down and k in self.online)
        return online, up

    def ready(self, nodes: int) -> bool:
        return self.counts(nodes) == (nodes, nodes)

    def describe(self, nodes: int) -> str:
        online, up = self.counts(nodes)
        text = f"{online} of {nodes} brokers online, {up} nodes' resources up"
        missing = [k for k in range(nodes) if k not in self.online or k in self.down]
        if missing:
            text += f" ({hostlist(missing)} not yet)"
        return text


@dataclass
class Ready:
    nodes: int
    size: int
    seconds: float
    probe: Probe

    def line(self) -> str:
        line = f"cluster ready: {self.probe.describe(self.nodes)} in {self.seconds:.1f}s"
        if self.size > self.nodes:
            spare = hostlist(range(self.nodes, self.size))
            line += f"; {spare} not started (room for {self.size})"
        return line


def probe(compose: Compose, timeout: float = 30) -> Probe | None:
    """Brokers online and ranks down, from node0; None while it does not answer."""
    try:
        done = compose.run(
            "exec", "-T", "node0", "flux", "python", "-c", PROBE, check=False, timeout=timeout
        )
    except TestbedError:
        return None
    if done.returncode != 0:
        return None
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return Probe(int(data["size"]), parse_idset(data["online"]), parse_idset(data["down"]))


def wait_ready(compose: Compose, nodes: int, timeout: float, start: float | None = None) -> Ready:
    """Until node0 .. node<nodes-1> are online with their resources up.

    Raises:
        TestbedError: not within `timeout` seconds; says how far it got.
    """
    start = time.monotonic() if start is None else start
    seen: list[Probe] = []

    def ready() -> Probe | None:
        found = probe(compose)
        if found is not None:
            seen[:] = [found]
        return found if found is not None and found.ready(nodes) else None

    try:
        found = wait_until(ready, timeout, f"{nodes} nodes ready", pause=0.5)
    except TestbedError:
        said = seen[0].describe(nodes) if seen else "node0 does not answer"
        raise TestbedError(
            f"not ready after {timeout:g}s: {said}; `make logs` shows the brokers' logs"
        ) from None
    return Ready(nodes, found.size, time.monotonic() - start, found)
