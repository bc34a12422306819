"""The compose testbed: one Flux instance of N containers, driven from the host.

`running_cluster` brings up a testbed under a project name of its own
(conduit-test-<random>), the way `make up` does (conduit.testbed: the
image tagged by a hash of its build inputs, ready once every broker is
online and every node's resources are up), waits until every node is
healthy too, and always takes it down again (`down --volumes
--remove-orphans`), unless asked to keep it.  A cluster's instance holds
exactly its nodes unless made with room to grow (`size`), which `scale`
uses.  Commands reach the instance as a user would type them: `docker
compose exec -T NODE flux ...`; the docker SDK gives container state and
testinfra runs commands inside a node.  The fixtures are in
tests/plugin_compose.py.

The engine is the one the user chose, as for `make up`: ENGINE=docker (the
default) or ENGINE=podman, and ENGINE_SOCKET, from the environment
(`make test ENGINE=podman` passes them on); tests/test_podman.py asks for
Podman itself.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conduit import testbed
from tests.runner import REPO, FluxRunner, wait_until

BASE_IMAGE = os.environ.get("BASE_IMAGE") or testbed.BASE_IMAGE  # as `make up` reads it
COMPOSE = ["docker", "compose"]
UP_TIMEOUT = 600  # the first build of the image included


def chosen_engine() -> testbed.Engine:
    """The engine of ENGINE and ENGINE_SOCKET (raises TestbedError for another ENGINE)."""
    return testbed.Engine.named(os.environ.get("ENGINE", ""), os.environ.get("ENGINE_SOCKET", ""))


def podman_engine() -> testbed.Engine:
    """Podman: on ENGINE_SOCKET when the user chose Podman, else on the testbed's own socket."""
    chosen = chosen_engine()
    return chosen if chosen.name == "podman" else testbed.Engine("podman")


def _run(
    argv: list[str], timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None


@functools.cache
def missing_compose(engine: testbed.Engine | None = None) -> str | None:
    """Why the compose tests cannot run here on `engine` (default: ENGINE), one line, or None."""
    engine = engine or chosen_engine()
    if shutil.which(engine.name) is None:
        return f"no {engine.name} (`{engine.name}` is not on PATH)"
    if shutil.which(COMPOSE[0]) is None:
        return f"no Compose v2 (`{COMPOSE[0]}` is not on PATH)"
    try:
        import testinfra  # noqa: F401

        import docker  # noqa: F401
    except ImportError as exc:
        return f"the docker SDK or pytest-testinfra is not installed ({exc})"
    env = {**os.environ, **engine.env()}
    if engine.name == "podman":
        try:
            engine.ensure_service(print)
        except testbed.TestbedError as exc:
            return str(exc)
    else:
        done = _run(["docker", "info", "--format", "{{.ServerVersion}}"], env=env)
        if done is None or done.returncode != 0:
            return "no Docker engine (`docker info` failed)"
    done = _run([*COMPOSE, "version", "--short"], env=env)
    if done is None or done.returncode != 0 or not done.stdout.strip().lstrip("v").startswith("2"):
        return "no Compose v2 (`docker compose version` failed or is not 2.x)"
    if engine.name == "podman":
        # what `make up ENGINE=podman` does: pull it from Docker Hub if missing
        probe = testbed.Testbed("conduit-test", REPO / "compose.yaml", engine=engine, quiet=True)
        try:
            probe.ensure_base_image(timeout=900)
        except testbed.TestbedError as exc:
            return f"no base image in Podman's store: {exc}"
        return None
    done = _run(["docker", "image", "inspect", BASE_IMAGE], env=env)
    if done is None or done.returncode != 0:
        return f"no base image {BASE_IMAGE} (`docker image inspect` failed)"
    return None


@dataclass
class ComposeCluster(FluxRunner):
    """A running testbed: `docker compose -p PROJECT -f FILE` with NODES of SIZE nodes."""

    project: str
    nodes: int
    file: Path
    size: int = 0  # the instance's size; 0: as many as nodes
    engine: testbed.Engine = testbed.Engine()
    data: Path | None = None  # the shared /data (DATA); None: data/ beside the file
    site: Path | None = None  # the site config (SITE_CONFIG); None: site.d/ beside the file

    def __post_init__(self) -> None:
        self.size = self.size or self.nodes
        self.data = self.data or self.file.parent / "data"
        self.site = self.site or self.file.parent / "site.d"
        self.site.mkdir(parents=True, exist_ok=True)

    @functools.cached_property
    def testbed(self) -> testbed.Testbed:
        """The same life cycle as `make up`, `make scale`, `make down`."""
        return testbed.Testbed(
            self.project,
            self.file,
            compose=[*COMPOSE, "--ansi", "never"],
            quiet=True,
            engine=self.engine,
            data=self.data or testbed.DATA,
            site=self.site or testbed.SITE_CONFIG,
        )

    @property
    def env(self) -> dict[str, str]:  # type: ignore[override]
        """The environment compose runs in (it names the image)."""
        return self.testbed.env()

    @property
    def base(self) -> list[str]:
        """`docker compose` for this project and file."""
        return self.testbed.command()

    def command(self, *argv: str, node: str | None = None, user: str | None = None) -> list[str]:
        """`docker compose exec -T [-u USER] NODE ARGV...` (node0 by default), as on the host."""
        who = ["-u", user] if user else []
        return [*self.base, "exec", "-T", *who, node or "node0", *argv]

    @property
    def names(self) -> list[str]:
        return [f"node{k}" for k in range(self.nodes)]

    def compose(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [*self.base, *args]
        done = subprocess.run(
            argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def up(self, timeout: float = UP_TIMEOUT) -> float:
        """Build if needed, start, wait until ready and healthy; the seconds to ready."""
        try:
            ready = self.testbed.up(self.nodes, self.size, timeout)
        except testbed.TestbedError as exc:
            raise RuntimeError(f"up of {self.project} failed: {exc}\n{self.logs()}") from None
        self.wait_healthy(timeout=120)
        return ready.seconds

    def scale(self, nodes: int, timeout: float = 300) -> float:
        """`make scale NODES=nodes` on this cluster; the seconds to ready."""
        ready = self.testbed.scale(nodes, timeout)
        self.nodes = nodes
        self.wait_healthy(timeout=120)
        return ready.seconds

    def wait_ready(self, timeout: float = 120) -> testbed.Ready:
        """Until every started broker is online and every started node's resources are up."""
        return self.testbed.wait_ready(self.nodes, timeout)

    def down(self) -> None:
        # What the nodes' users wrote to /data (the host user may not remove it).
        self.compose(
            "exec", "-T", "node0", "sudo", "-n", "find", "/data", "-mindepth", "1", "-delete",
            check=False, timeout=60,
        )  # fmt: skip
        self.compose(
            "down", "--volumes", "--remove-orphans", "--timeout", "60", check=False, timeout=300
        )

    def logs(self) -> str:
        done = self.compose("logs", "--no-color", "--timestamps", check=False, timeout=60)
        return done.stdout + done.stderr

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
        assert len(found) == 1, f"{self.project}: {len(found)} containers for {node}"
        return found[0]

    # Podman runs healthchecks from systemd timers.  Without systemd (in a
    # container, on CI machines, on many HPC nodes) they never run and health
    # stays "starting", so with Podman a node's health is the instance's own
    # readiness instead: its broker online and its resources up, as rank 0
    # sees them (what `make up` waits for), which implies what the
    # healthcheck checks (rank 0 running, a round trip to it).

    def health(self, node: str) -> str:
        state = self.container(node).attrs["State"]
        if not state["Running"]:
            return str(state["Status"])
        if self.engine.name == "podman":
            probe, k = self.testbed.probe(), int(node.removeprefix("node"))
            up = probe is not None and k in probe.online and k not in probe.down
            return "healthy" if up else "starting"
        return str(state["Health"]["Status"])

    def host(self, node: str) -> Any:
        """A testinfra host for `node` (commands run as the instance owner)."""
        import testinfra

        return testinfra.get_host(f"{self.engine.name}://{self.container(node).name}")

    def wait_healthy(self, timeout: float = 120) -> None:
        def healthy() -> bool:
            if self.engine.name == "podman":  # one probe for all nodes (see above)
                probe = self.testbed.probe()
                return probe is not None and probe.ready(self.nodes)
            return all(self.health(node) == "healthy" for node in self.names)

        wait_until(healthy, timeout, f"every node of {self.project} healthy", pause=0.5)

    def overlay(self) -> dict[str, Any]:
        """The instance's overlay health (RPC overlay.health on rank 0), as JSON."""
        code = (
            "import flux, json; "
            "print(json.dumps(flux.Flux().rpc('overlay.health', nodeid=0).get()))"
        )
        return dict(json.loads(self.flux("python", "-c", code).stdout))


@contextmanager
def running_cluster(
    nodes: int,
    keep: bool = False,
    size: int = 0,
    engine: testbed.Engine | None = None,
    site_files: Sequence[Path] = (),
) -> Iterator[ComposeCluster]:
    """Up for the block, down after it (also on failure and Ctrl-C) unless `keep`.

    The instance holds `size` nodes (default: `nodes`); its compose file is
    written by conduit.testbed into a directory of its own, beside its
    shared directory (data/) and its site config (site.d/, which starts
    with copies of `site_files`).  `engine`: the one of ENGINE by default.
    """
    file = Path(tempfile.mkdtemp(prefix="conduit-compose-")) / "compose.yaml"
    project = f"conduit-test-{secrets.token_hex(4)}"
    cluster = ComposeCluster(project, nodes, file, size, engine or chosen_engine())
    for path in site_files:
        shutil.copy(path, file.parent / "site.d" / path.name)
    try:
        cluster.up()
        yield cluster
    finally:
        if not keep:
            cluster.down()
            shutil.rmtree(file.parent, ignore_errors=True)
