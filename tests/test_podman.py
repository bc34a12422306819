"""The compose testbed on Podman: Compose v2 against Podman's Docker-compatible API.

The first tests check, without Podman, how ENGINE=podman reaches it.  The
others (marked compose and slow) ask for Podman whatever ENGINE says (on
ENGINE_SOCKET when ENGINE=podman, else on the socket of the service the
testbed starts), and skip with the reason where Podman, Compose v2 or the
base image (pulled into Podman's store if missing) cannot be had.  One
testbed of 3 nodes serves them, under a project name of its own, and is
always taken down.  The same tests run on Docker in tests/test_compose.py;
here is what could differ on Podman: the limits its containers need,
healthchecks that never run without systemd, the watchdog on Podman's
socket, and restarts that keep rank 0's state.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from conduit import output, testbed
from tests.compose_cluster import ComposeCluster, missing_compose, podman_engine
from tests.plugin_compose import cluster_maker
from tests.runner import REPO, check_attach_output, overlay_states, wait_until

NODES = ["node0", "node1", "node2"]


def test_podman_is_reached_through_its_docker_api_with_the_classic_builder() -> None:
    env = testbed.Engine.named("podman").env()
    socket = testbed.podman_socket()
    assert env["DOCKER_HOST"] == f"unix://{socket}"
    assert env["ENGINE_SOCKET"] == socket  # the watchdog's mount
    assert (env["DOCKER_BUILDKIT"], env["COMPOSE_DOCKER_CLI_BUILD"]) == ("0", "0")
    if not os.environ.get("CONTAINERS_CONF"):
        assert env["CONTAINERS_CONF"] == str(testbed.PODMAN_CONF)
    conf = testbed.PODMAN_CONF.read_text()
    assert re.search(r'^\[containers\]\ndefault_ulimits = \[\n  "nofile=1024:1024",\n', conf, re.M)
    assert '"nproc=4096:4096"' in conf
    assert testbed.Engine.named("").env() == {}  # Docker: as it always was


def test_base_image_names_are_qualified_for_podman() -> None:
    assert testbed.qualified(testbed.BASE_IMAGE) == f"docker.io/{testbed.BASE_IMAGE}"
    assert testbed.qualified("ghcr.io/o/flux-conduit:1") == "ghcr.io/o/flux-conduit:1"
    assert testbed.qualified("localhost/flux-conduit:x") == "localhost/flux-conduit:x"
    assert testbed.short_ref("docker.io/library/flux-conduit:x") == "flux-conduit:x"
    assert testbed.short_ref("localhost/flux-conduit:x") == "flux-conduit:x"


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[ComposeCluster]:
    with cluster_maker(request.config, podman_engine())(len(NODES)) as made:
        yield made


@pytest.mark.compose
@pytest.mark.slow
def test_the_nodes_run_on_podman_with_the_overlay_full_and_every_node_up(
    cluster: ComposeCluster,
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

    assert overlay_states(cluster.overlay()) == {0: "full", 1: "full", 2: "full"}
    probe = cluster.testbed.probe()
    assert probe is not None
    assert (probe.size, probe.online, probe.down) == (3, [0, 1, 2], [])
    free = cluster.flux("resource", "list", "--states=free", "--no-header", "-o", "{nodelist}")
    assert free.stdout.split() == ["node[0-2]"]


@pytest.mark.compose
@pytest.mark.slow
def test_the_demo_passes(cluster: ComposeCluster) -> None:
    demo = cluster.conduit("demo", "--sleep", "0", timeout=300)
    result = output.parse(demo.stdout)
    assert result.lines[-1] == "demo: 5 of 5 compute packets in the final store"


@pytest.mark.compose
@pytest.mark.slow
def test_datastore_on_node2_computes_on_node0_and_node1(cluster: ComposeCluster) -> None:
    hosts = ["node0", "node1", "node0", "node1", "node0"]
    ds = cluster.submit("datastore", "--packets", str(len(hosts)), "--fresh", host="node2")
    with cluster.attach(ds) as stream:
        stream.until(lambda line: line == output.INITIALIZED, timeout=120)
        computes = [cluster.submit("compute", "0", host=h) for h in hosts]
        status = stream.finish(timeout=120)
    assert status == 0, f"attach {ds} exited {status}: {stream.lines}\n{stream.stderr()}"
    check_attach_output(output.parse("\n".join(stream.lines)), [cluster.plain(j) for j in computes])
    for jobid, host in zip(computes, hosts):
        info = cluster.wait_inactive(jobid)
        assert (info["result"], info["nodelist"]) == ("COMPLETED", host), info
    info = cluster.wait_inactive(ds)
    assert (info["result"], info["nodelist"]) == ("COMPLETED", "node2"), info


@pytest.mark.compose
@pytest.mark.slow
def test_the_watchdog_starts_a_killed_node_through_podmans_socket(cluster: ComposeCluster) -> None:
    node2 = cluster.container("node2")
    started = node2.attrs["State"]["StartedAt"]
    node2.kill()  # what `podman kill` does; Podman's restart policy does not apply either

    def started_again() -> bool:
        node2.reload()
        state = node2.attrs["State"]
        return bool(state["Running"]) and state["StartedAt"] != started

    wait_until(started_again, 60, "node2 started again")
    logs = cluster.container("watchdog").logs().decode()
    assert "conduit-watchdog: node2 exited 137 (killed); starting it" in logs
    cluster.wait_ready(timeout=120)
    assert overlay_states(cluster.overlay()) == {0: "full", 1: "full", 2: "full"}


@pytest.mark.compose
@pytest.mark.slow
def test_a_restart_keeps_rank_0s_state(cluster: ComposeCluster) -> None:
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


@pytest.mark.compose
@pytest.mark.slow
def test_make_up_demo_down_with_engine_podman() -> None:
    """As a user types it: make up ENGINE=podman && make demo ENGINE=podman; make down."""
    engine = podman_engine()
    reason = missing_compose(engine)
    if reason:
        pytest.skip(f"needs Podman: {reason}")
    if shutil.which("make") is None:
        pytest.skip("no make")
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
