"""The compose testbed on Podman: Compose v2 against Podman's Docker-compatible API.

These tests ask for Podman whatever ENGINE says (on ENGINE_SOCKET when
ENGINE=podman, else on the socket of the service the testbed starts), and
skip with the reason where Podman, Compose v2 or the base image (pulled
into Podman's store if missing) cannot be had.  The session's testbed of 3
nodes on Podman serves them.  The same scenario runs on Docker in
tests/testbed/test_compose.py; here is what could differ on Podman: the
limits its containers need, healthchecks that never run without systemd,
the watchdog on Podman's socket, and restarts that keep rank 0's state.
(How ENGINE=podman reaches Podman is checked without it in
tests/unit/test_engine.py.)
"""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from conduit import output
from conduit.testbed.cluster import ComposeTestbed
from conduit.testbed.waiting import wait_until
from tests.checks import REPO, run_scenario

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.flux_testbed(engine="podman")]

NODES = ["node0", "node1", "node2"]


@pytest.fixture
def cluster(flux_testbed: ComposeTestbed) -> ComposeTestbed:
    """The session's testbed of 3 nodes on Podman (the marker below asks for it)."""
    return flux_testbed


def test_the_nodes_run_on_podman_with_the_overlay_full_and_every_node_up(
    cluster: ComposeTestbed,
) -> None:
    assert cluster.client.version()["Components"][0]["Name"] == "Podman Engine"
    for k, node in enumerate(NODES):
        container = cluster.container(node)
        assert container.attrs["Config"]["Hostname"] == node
        # the limits of docker/podman-containers.conf, which the API service applied
        ulimits = {u["Name"]: u for u in container.attrs["HostConfig"]["Ulimits"]}
        assert ulimits["RLIMIT_NOFILE"]["Hard"] == 1024
        assert cluster.health(node) == "healthy"
        host = cluster.host(node)
        assert host.user().name == "fluxuser"
        assert host.check_output("flux getattr rank") == str(k)

    assert cluster.overlay_states() == {0: "full", 1: "full", 2: "full"}
    probe = cluster.testbed.probe()
    assert probe is not None
    assert (probe.size, probe.online, probe.down) == (3, [0, 1, 2], [])
    free = cluster.flux("resource", "list", "--states=free", "--no-header", "-o", "{nodelist}")
    assert free.stdout.split() == ["node[0-2]"]


def test_the_demo_passes(cluster: ComposeTestbed) -> None:
    demo = cluster.conduit("demo", "--sleep", "0", timeout=300)
    result = output.parse(demo.stdout)
    assert result.lines[-1] == "demo: 5 of 5 compute packets in the final store"


def test_datastore_on_node2_computes_on_node0_and_node1(cluster: ComposeTestbed) -> None:
    run_scenario(cluster, "node2", ["node0", "node1", "node0", "node1", "node0"])


def test_the_watchdog_starts_a_killed_node_through_podmans_socket(cluster: ComposeTestbed) -> None:
    _, started = cluster.started("node2")
    cluster.kill("node2")  # what `podman kill` does; Podman's restart policy does not apply either
    wait_until(lambda: cluster.started("node2")[1] != started, 60, "node2 started again")
    logs = cluster.container("watchdog").logs().decode()
    assert "conduit-watchdog: node2 exited 137 (killed); starting it" in logs
    cluster.wait_ready(timeout=120)
    assert cluster.overlay_states() == {0: "full", 1: "full", 2: "full"}


def test_a_restart_keeps_rank_0s_state(cluster: ComposeTestbed) -> None:
    """`make restart` shuts rank 0 down cleanly: it dumps its KVS and restores it.

    Podman's Docker API kills at once on a restart without a timeout,
    where Docker waits stop_grace_period; the testbed gives one.
    """
    cluster.flux("kvs", "put", "podman.kept=yes")
    cluster.testbed.restart(timeout=120)
    assert cluster.flux("kvs", "get", "podman.kept").stdout.strip() == "yes"
    logs = cluster.container("node0").logs().decode()
    assert "rc1.0: restoring content from /var/lib/flux/dump/" in logs
    assert "Flux was not shut down properly" not in logs
    cluster.wait_healthy(timeout=120)


def test_make_up_demo_down_with_engine_podman(cluster: ComposeTestbed) -> None:
    """As a user types it: make up ENGINE=podman && make demo ENGINE=podman; make down."""
    engine = cluster.engine  # Podman is there: the session's Podman testbed runs
    project = f"conduit-test-make-{secrets.token_hex(4)}"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env.update(ENGINE="podman", ENGINE_SOCKET=engine.socket)

    def make(target: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "--no-print-directory", target, f"PROJECT={project}", "NODES=2"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    try:
        up = make("up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "cluster ready: 2 of 2 brokers online, 2 nodes' resources up" in up.stdout
        demo = make("demo", timeout=300)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert demo.stdout.splitlines()[0].startswith(f"DOCKER_HOST=unix://{engine.api_socket} "), (
            "make demo runs compose against Podman's socket"
        )
        assert demo.stdout.splitlines()[-1] == "demo: 5 of 5 compute packets in the final store"
    finally:
        down = make("down", timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (REPO / "build" / project).exists()

    def names(*args: str, field: str = "Name") -> list[str]:
        done = subprocess.run(
            ["podman", *args, "--format", f"{{{{.{field}}}}}"],
            env={**os.environ, **engine.env()},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return [name for name in done.stdout.split() if name.startswith(project)]

    assert (
        names("ps", "--all", field="Names") == names("volume", "ls") == names("network", "ls") == []
    )
