"""The compose testbed as a pytest fixture: one Flux instance of N containers.

`compose_cluster` (session scope) brings up a 3-node testbed under a
project name of its own (conduit-test-<random>), the way `make up` does
(conduit.testbed: the image tagged by a hash of its build inputs, ready
once every broker is online and every node's resources are up), waits
until every node is healthy too, and always takes it down again (`down
--volumes --remove-orphans`), unless --keep-cluster.  `sized_cluster` does
the same for another size (indirect parameter N).  A cluster's instance
holds exactly its nodes unless made with room to grow (`size`), which
`scale` uses.  When a test that uses a cluster fails, the `docker compose
logs` of its nodes go into the test report.

Where Docker, Compose v2 or the base image is missing, these fixtures
skip the test with one line saying which.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conduit import testbed

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = os.environ.get("BASE_IMAGE", "fluxrm/flux-core:bookworm-v0.88.0")
COMPOSE = ["docker", "compose"]
UP_TIMEOUT = 600  # the first build of the image included


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


@functools.cache
def missing_compose() -> str | None:
    """Why the compose tests cannot run here (one line), or None."""
    if shutil.which("docker") is None:
        return "no Docker CLI (`docker` is not on PATH)"
    try:
        import testinfra  # noqa: F401

        import docker  # noqa: F401
    except ImportError as exc:
        return f"the docker SDK or pytest-testinfra is not installed ({exc})"
    done = _run(["docker", "info", "--format", "{{.ServerVersion}}"])
    if done is None or done.returncode != 0:
        return "no Docker engine (`docker info` failed)"
    done = _run([*COMPOSE, "version", "--short"])
    if done is None or done.returncode != 0 or not done.stdout.strip().lstrip("v").startswith("2"):
        return "no Compose v2 (`docker compose version` failed or is not 2.x)"
    done = _run(["docker", "image", "inspect", BASE_IMAGE])
    if done is None or done.returncode != 0:
        return f"no base image {BASE_IMAGE} (`docker image inspect` failed)"
    return None


@dataclass
class ComposeCluster:
    """A running testbed: `docker compose -p PROJECT -f FILE` with NODES of SIZE nodes."""

    project: str
    nodes: int
    file: Path
    size: int = 0  # the instance's size; 0: as many as nodes

    def __post_init__(self) -> None:
        self.size = self.size or self.nodes

    @property
    def testbed(self) -> testbed.Testbed:
        """The same life cycle as `make up`, `make scale`, `make down`."""
        return testbed.Testbed(
            self.project, self.file, compose=[*COMPOSE, "--ansi", "never"], quiet=True
        )

    @property
    def command(self) -> list[str]:
        return [*COMPOSE, "--ansi", "never", "-p", self.project, "-f", str(self.file)]

    @property
    def names(self) -> list[str]:
        return [f"node{k}" for k in range(self.nodes)]

    def compose(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [*self.command, *args]
        done = subprocess.run(
            argv, cwd=REPO, env=self.testbed.env(), capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def exec(
        self, node: str, *argv: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose exec -T NODE ARGV...`, as a user on the host would."""
        return self.compose("exec", "-T", node, *argv, check=check, timeout=timeout)

    def flux(self, *args: str, node: str = "node0", **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.exec(node, "flux", *args, **kw)

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
        self.compose(
            "down", "--volumes", "--remove-orphans", "--timeout", "60", check=False, timeout=300
        )

    def logs(self) -> str:
        done = self.compose("logs", "--no-color", "--timestamps", check=False, timeout=60)
        return done.stdout + done.stderr

    def container(self, node: str) -> Any:
        """The docker SDK container of service `node`."""
        import docker

        labels = [
            f"com.docker.compose.project={self.project}",
            f"com.docker.compose.service={node}",
        ]
        found = docker.from_env().containers.list(all=True, filters={"label": labels})
        assert len(found) == 1, f"{self.project}: {len(found)} containers for {node}"
        return found[0]

    def health(self, node: str) -> str:
        state = self.container(node).attrs["State"]
        return str(state["Health"]["Status"]) if state["Running"] else state["Status"]

    def host(self, node: str) -> Any:
        """A testinfra host for `node` (commands run as the instance owner)."""
        import testinfra

        return testinfra.get_host(f"docker://{self.container(node).name}")

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {node: self.health(node) for node in self.names}
            if all(s == "healthy" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not all nodes healthy after {timeout:g}s: {states}")
            time.sleep(0.5)

    def overlay(self) -> dict[str, Any]:
        """The instance's overlay health (RPC overlay.health on rank 0), as JSON."""
        code = (
            "import flux, json; "
            "print(json.dumps(flux.Flux().rpc('overlay.health', nodeid=0).get()))"
        )
        return dict(json.loads(self.flux("python", "-c", code).stdout))

    def attach(self, jobid: str, node: str = "node0") -> AttachStream:
        return AttachStream([*self.command, "exec", "-T", node, "flux", "job", "attach", jobid])


class AttachStream:
    """The stdout lines of a `flux job attach`, read with deadlines."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, deadline: float) -> str | None:
        """The next line, None at the end; AssertionError when time is up."""
        try:
            line = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            raise AssertionError(f"no output within the time; got so far: {self.lines}") from None
        if line is not None:
            self.lines.append(line)
        return line

    def until(self, want: Any, timeout: float) -> str:
        """Read up to the first line for which want(line) holds."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(deadline)
            if line is None:
                raise AssertionError(f"attach ended first: {self.lines}\n{self.stderr()}")
            if want(line):
                return line

    def finish(self, timeout: float) -> int:
        """Read to the end; the attach exit status."""
        deadline = time.monotonic() + timeout
        while self.next(deadline) is not None:
            pass
        return self.proc.wait(timeout=max(deadline - time.monotonic(), 1))

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@contextmanager
def running_cluster(config: pytest.Config, nodes: int, size: int = 0) -> Iterator[ComposeCluster]:
    """Up for the block, down after it (also on failure and Ctrl-C) unless --keep-cluster.

    The instance holds `size` nodes (default: `nodes`); its compose file is
    written by conduit.testbed into a directory of its own.
    """
    reason = missing_compose()
    if reason:
        pytest.skip(f"needs Docker: {reason}")
    file = Path(tempfile.mkdtemp(prefix="conduit-compose-")) / "compose.yaml"
    cluster = ComposeCluster(f"conduit-test-{secrets.token_hex(4)}", nodes, file, size)
    keep = bool(config.getoption("--keep-cluster"))
    try:
        cluster.up()
        yield cluster
    finally:
        if keep:
            say(
                config,
                f"kept cluster {cluster.project}; remove it with: {' '.join(COMPOSE)} "
                f"-p {cluster.project} -f {cluster.file} down --volumes --remove-orphans",
            )
        else:
            cluster.down()
            shutil.rmtree(file.parent, ignore_errors=True)


def say(config: pytest.Config, line: str) -> None:
    """A line on the terminal, past pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write("\n")
        reporter.write_line(line)


@pytest.fixture(scope="session")
def compose_cluster(request: pytest.FixtureRequest) -> Iterator[ComposeCluster]:
    """The testbed of the default size (conduit.testbed.DEFAULT_NODES), shared by the session."""
    with running_cluster(request.config, testbed.DEFAULT_NODES) as cluster:
        yield cluster


@pytest.fixture
def sized_cluster(request: pytest.FixtureRequest) -> Iterator[ComposeCluster]:
    """A testbed of request.param nodes, for one test."""
    with running_cluster(request.config, int(request.param)) as cluster:
        yield cluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, ComposeCluster):
            report.sections.append((f"docker compose logs ({value.project})", value.logs()))
