"""A compose testbed for tests: one Flux instance of N containers, and what a test does to it.

`running_testbed` brings up a testbed under a project name of its own
(flux-testbed-<random>) with the same life cycle as `make up`
(conduit.testbed.lifecycle), waits until every node is healthy, and
always takes it down again (`down --volumes`), unless asked to keep it.
A testbed that a crashed or interrupted session left behind is removed by
the next session (`remove_leftovers`), so no cluster outlives its run.

`ComposeTestbed` is the object tests get: commands on a node as a user
(`run`, `flux`, `submit_command`, `attach`, ...; see
conduit.testbed.instance), and the faults a real cluster goes through:
kill, stop and start a node, cut it off the network and heal it, restart
rank 0, scale.  The docker SDK gives container state; testinfra runs
commands inside a node.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conduit.testbed import image
from conduit.testbed.compose import STOP_TIMEOUT, Compose
from conduit.testbed.engine import Engine
from conduit.testbed.errors import TestbedError
from conduit.testbed.image import build_context
from conduit.testbed.instance import Instance
from conduit.testbed.lifecycle import Testbed
from conduit.testbed.paths import work_dir
from conduit.testbed.readiness import Ready

COMPOSE = ("docker", "compose")
UP_TIMEOUT = 900  # the first build of the image included
PROJECT_PREFIX = "flux-testbed-"


def _run(
    argv: list[str], timeout: float = 60, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None


@functools.cache
def missing_engine(engine: Engine, published: str | None = None) -> str | None:
    """Why a testbed cannot run here on `engine`, in one line, or None.

    Args:
        engine: Docker or Podman.
        published: the published image to run, if one is named (else the
            base image must be there to build on).
    """
    if shutil.which(engine.name) is None:
        return f"no {engine.name} (`{engine.name}` is not on PATH)"
    if shutil.which(COMPOSE[0]) is None:
        return f"no Compose v2 (`{COMPOSE[0]}` is not on PATH)"
    env = {**os.environ, **engine.env()}
    if engine.name == "podman":
        try:
            engine.ensure_service(lambda line: None)
        except TestbedError as exc:
            return str(exc)
        no_dns = engine.missing_dns()
        if no_dns:
            return no_dns
    else:
        done = _run(["docker", "info", "--format", "{{.ServerVersion}}"], env=env)
        if done is None or done.returncode != 0:
            return "no Docker engine (`docker info` failed)"
    done = _run([*COMPOSE, "version", "--short"], env=env)
    if done is None or done.returncode != 0 or not done.stdout.strip().lstrip("v").startswith("2"):
        return "no Compose v2 (`docker compose version` failed or is not 2.x)"
    if published:
        return None  # pulled at up if missing; a failed pull fails the test with its reason
    probe = Compose("flux-testbed-probe", Path("compose.yaml"), "", COMPOSE, engine, quiet=True)
    try:
        image.ensure_base_image(probe, timeout=900)  # Podman: pulled if it can be
    except TestbedError as exc:
        return f"no base image: {exc}"
    if not probe.image_present(image.base_image()):
        return f"no base image {image.base_image()} (`{engine.name} image inspect` failed)"
    return None


def registry() -> Path:
    """Where running testbeds are recorded (project -> compose file, owner's pid)."""
    return work_dir() / "testbeds"


def remove_leftovers(say: Callable[[str], None] = print) -> list[str]:
    """Take down the testbeds whose session ended without taking them down (crash, kill -9).

    A testbed is recorded while it runs, with the pid of the process that
    made it; one whose process is gone is a leftover.  Kept testbeds
    (--flux-testbed-keep) are not recorded, so they stay.
    """
    removed = []
    for record in sorted(registry().glob("*.json")):
        try:
            entry = json.loads(record.read_text())
            project, file, pid = str(entry["project"]), Path(entry["file"]), int(entry["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if alive(pid):
            continue
        if file.is_file():
            engine = Engine.named(entry.get("engine", "docker"), entry.get("socket", ""))
            try:
                Compose(project, file, "", COMPOSE, engine, quiet=True).down()
            except TestbedError as exc:
                say(f"flux-testbed: could not remove the leftover testbed {project}: {exc}")
                continue
            shutil.rmtree(file.parent, ignore_errors=True)
            removed.append(project)
        record.unlink(missing_ok=True)
    return removed


def alive(pid: int) -> bool:
    """Whether process `pid` runs (whoever owns it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ComposeTestbed(Instance):
    """A running testbed: `docker compose -p PROJECT -f FILE` with NODES of SIZE nodes."""

    project: str
    nodes: int
    file: Path
    size: int = 0  # the instance's size; 0: as many as nodes
    engine: Engine = field(default_factory=Engine)
    image: str | None = None  # a published image; None: build flux-conduit:<hash>

    def __post_init__(self) -> None:
        self.size = self.size or self.nodes
        # its own shared directory (/data on every node) and site config, beside its file
        self.data = self.file.parent / "data"
        self.site = self.file.parent / "site.d"
        self.site.mkdir(parents=True, exist_ok=True)

    @functools.cached_property
    def testbed(self) -> Testbed:
        """The same life cycle as `make up`, `make scale`, `make down`."""
        return Testbed(
            self.project, self.file, compose_command=[*COMPOSE, "--ansi", "never"],
            image=self.image, quiet=True, engine=self.engine, data=self.data, site=self.site,
        )  # fmt: skip

    @property
    def compose(self) -> Compose:
        """The one runner of this project's compose commands."""
        return self.testbed.compose

    @property
    def env(self) -> dict[str, str]:  # type: ignore[override]
        """The environment compose runs in (it names the engine and the image)."""
        return self.compose.env()

    @property
    def cwd(self) -> Path:  # type: ignore[override]
        return build_context()

    def command(self, *argv: str, node: str | None = None, user: str | None = None) -> list[str]:
        """`docker compose exec -T [-u USER] NODE ARGV...` (node0 by default), as from the host."""
        as_user = ["-u", user] if user else []
        return self.compose.argv("exec", "-T", *as_user, node or "node0", *argv)

    @property
    def names(self) -> list[str]:
        """The running nodes' services: node0 .. node<nodes-1>."""
        return [f"node{k}" for k in range(self.nodes)]

    # -- life cycle ---------------------------------------------------------

    def up(self, timeout: float = UP_TIMEOUT) -> float:
        """Build if needed, start, wait until ready and healthy; the seconds to ready.

        Raises:
            TestbedError: it did not come up; the message has the nodes' logs.
        """
        try:
            ready = self.testbed.up(self.nodes, self.size, timeout)
            self.wait_healthy(timeout=120)
        except TestbedError as exc:
            raise TestbedError(f"up of {self.project} failed: {exc}\n{self.logs()}") from None
        return ready.seconds

    def scale(self, nodes: int, timeout: float = 300) -> float:
        """`make scale NODES=nodes` on this testbed; the seconds to ready."""
        ready = self.testbed.scale(nodes, timeout)
        self.nodes = nodes
        self.wait_healthy(timeout=120)
        return ready.seconds

    def wait_ready(self, timeout: float = 120) -> Ready:
        """Until every started broker is online and every started node's resources are up."""
        return self.testbed.wait_ready(self.nodes, timeout)

    def down(self) -> bool:
        """Remove the containers, the network and the volumes (and what the nodes wrote).

        Returns whether compose removed them (False: the engine did not answer, say).
        """
        # the nodes' users wrote /data with their uids; the host user may not remove that
        self.compose.run(
            "exec", "-T", "node0", "sudo", "-n", "find", "/data", "-mindepth", "1", "-delete",
            check=False, timeout=60,
        )  # fmt: skip
        done = self.compose.run(
            "down", "--volumes", "--remove-orphans", "--timeout", STOP_TIMEOUT,
            check=False, timeout=300,
        )  # fmt: skip
        return done.returncode == 0

    def logs(self) -> str:
        """Every node's log, with timestamps."""
        return self.compose.logs()

    def how_to_reach(self) -> str:
        """The commands that reach this testbed from a shell, and the one that removes it."""
        env = "".join(f"{k}={v} " for k, v in self.engine.env().items() if k == "DOCKER_HOST")
        base = f"{env}{' '.join(COMPOSE)} -p {self.project} -f {self.file}"
        return f"reach it with: {base} exec node0 bash; remove it with: {base} down --volumes"

    # -- the shared directory ----------------------------------------------

    def write_file(self, path: str, text: str) -> Path:
        """Write `text` to /data/PATH (every node sees it); its path on the host."""
        target = self.data / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def read_file(self, path: str) -> str:
        """What /data/PATH holds (written on any node), read on the host."""
        return (self.data / path).read_text()

    # -- containers -------------------------------------------------------

    @functools.cached_property
    def client(self) -> Any:
        """A docker SDK client of the engine (Podman's through its Docker-compatible API)."""
        import docker

        if self.engine.name == "podman":
            return docker.DockerClient(base_url=f"unix://{self.engine.api_socket}")
        return docker.from_env()

    def container(self, node: str) -> Any:
        """The docker SDK container of service `node`."""
        labels = [
            f"com.docker.compose.project={self.project}",
            f"com.docker.compose.service={node}",
        ]
        found = self.client.containers.list(all=True, filters={"label": labels})
        if len(found) != 1:
            raise TestbedError(f"{self.project}: {len(found)} containers for {node}")
        return found[0]

    def host(self, node: str) -> Any:
        """A testinfra host for `node` (commands run as the instance owner)."""
        import testinfra

        return testinfra.get_host(f"{self.engine.name}://{self.container(node).name}")

    def started(self, node: str) -> tuple[str, str]:
        """The node's container id, and when it last started."""
        container = self.container(node)
        return container.id, container.attrs["State"]["StartedAt"]

    # Podman runs healthchecks from systemd timers.  Without systemd (in a
    # container, on CI machines, on many HPC nodes) they never run and health
    # stays "starting", so with Podman a node's health is the instance's own
    # readiness instead: its broker online and its resources up, as rank 0
    # sees them (what `make up` waits for), which implies what the
    # healthcheck checks (rank 0 running, a round trip to it).

    def health(self, node: str) -> str:
        """healthy, starting, or the container's status when it does not run."""
        state = self.container(node).attrs["State"]
        if not state["Running"]:
            return str(state["Status"])
        if self.engine.name == "podman":
            probe, k = self.testbed.probe(), int(node.removeprefix("node"))
            up = probe is not None and k in probe.online and k not in probe.down
            return "healthy" if up else "starting"
        return str(state["Health"]["Status"])

    def wait_healthy(self, timeout: float = 120) -> None:
        """Until every running node is healthy."""

        def healthy() -> bool:
            if self.engine.name == "podman":  # one probe for all nodes (see above)
                probe = self.testbed.probe()
                return probe is not None and probe.ready(self.nodes)
            return all(self.health(node) == "healthy" for node in self.names)

        self.wait_until(healthy, timeout, f"every node of {self.project} healthy", pause=0.5)

    def overlay(self) -> dict[str, Any]:
        """The instance's overlay health (RPC overlay.health on rank 0), as JSON."""
        code = (
            "import flux, json; "
            "print(json.dumps(flux.Flux().rpc('overlay.health', nodeid=0).get()))"
        )
        return dict(json.loads(self.python(code).stdout))

    def overlay_states(self) -> dict[int, str]:
        """rank -> overlay status (full, partial, offline, ...), over the whole tree."""
        return overlay_states(self.overlay())

    # -- faults -------------------------------------------------------------

    def kill(self, node: str) -> None:
        """What `docker kill NODE` does: SIGKILL to the container (the watchdog restarts it)."""
        self.container(node).kill()

    def stop(self, node: str) -> None:
        """Stop the node's container, its broker shutting down cleanly first."""
        self.compose.run("stop", "--timeout", STOP_TIMEOUT, node, timeout=180)

    def start(self, node: str) -> None:
        """Start a stopped node's container again."""
        self.compose.run("start", node, timeout=180)

    def restart(self, node: str = "node0") -> None:
        """Restart the node's container (rank 0's: the instance restarts, its state kept)."""
        # Podman's API reads a restart without a timeout as 0 and would kill
        # rank 0 before it saved its KVS.
        self.compose.run("restart", "--timeout", STOP_TIMEOUT, node, timeout=180)

    @property
    def network(self) -> Any:
        """The testbed's network (docker SDK)."""
        return self.client.networks.get(f"{self.project}_default")

    def disconnect(self, node: str) -> None:
        """Cut the node off the network (its broker loses rank 0, the node keeps running)."""
        self.network.disconnect(self.container(node))

    def reconnect(self, node: str) -> None:
        """Put a cut-off node back on the network."""
        self.network.connect(self.container(node))

    @contextmanager
    def cut_off(self, node: str) -> Iterator[None]:
        """The node off the network for the block, back on after it (also on failure)."""
        self.disconnect(node)
        try:
            yield
        finally:
            self.reconnect(node)


def overlay_states(node: Mapping[str, Any]) -> dict[int, str]:
    """rank -> overlay status, over the whole tree of an overlay.health answer."""
    states = {int(node["rank"]): str(node["status"])}
    for child in node.get("children", []):
        states.update(overlay_states(child))
    return states


@contextmanager
def running_testbed(
    nodes: int,
    size: int = 0,
    engine: Engine | None = None,
    published: str | None = None,
    keep: bool = False,
    site_files: Sequence[Path] = (),
) -> Iterator[ComposeTestbed]:
    """A testbed of its own for the block; taken down after it (also on failure) unless `keep`.

    Args:
        nodes: nodes that run, node0 .. node<nodes-1>.
        size: the instance's size (room to grow with `scale`); default `nodes`.
        engine: Docker (default) or Podman.
        published: a published image to run instead of building this tree's.
        keep: leave it running (for debugging; `how_to_reach()` says how).
        site_files: the site's broker config (*.toml) it starts with.
    """
    engine = engine or Engine()
    remove_leftovers()
    project = f"{PROJECT_PREFIX}{secrets.token_hex(4)}"
    file = Path(tempfile.mkdtemp(prefix=f"{project}-")) / "compose.yaml"
    tb = ComposeTestbed(project, nodes, file, size, engine, published)
    for path in site_files:
        shutil.copy(path, tb.site / Path(path).name)
    record = registry() / f"{project}.json"
    if not keep:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({
            "project": project, "file": str(file), "pid": os.getpid(),
            "engine": engine.name, "socket": engine.socket,
        }))  # fmt: skip
    try:
        tb.up()
        yield tb
    finally:
        if not keep and tb.down():
            shutil.rmtree(file.parent, ignore_errors=True)
            record.unlink(missing_ok=True)
        # else the record stays: the next session's remove_leftovers() takes it down
