"""The compose testbed as a system instance: faults it heals, state it keeps, its size.

Each test brings up a testbed of its own (the plugin's flux_testbed_factory,
the same life cycle as `make up`), does to it what a real cluster goes through
(rank 0 restarted, a node killed or cut off its network, nodes added and
removed, `make up` run again) and checks that the instance comes back by
itself, with its state, and without touching what it should not.  They skip
where Docker, Compose v2 or the base image is missing.
"""

from __future__ import annotations

import errno
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from conduit import output
from conduit.testbed.cluster import ComposeTestbed
from conduit.testbed.lifecycle import Testbed
from conduit.testbed.plugin import NewTestbed
from conduit.testbed.readiness import Probe
from conduit.testbed.waiting import wait_until

pytestmark = pytest.mark.compose


@pytest.fixture
def cluster(flux_testbed_factory: NewTestbed) -> Iterator[ComposeTestbed]:
    """Three nodes, an instance of three: the overlay is `full` when all are online."""
    with flux_testbed_factory(nodes=3) as c:
        yield c


@pytest.fixture
def growable(flux_testbed_factory: NewTestbed) -> Iterator[ComposeTestbed]:
    """Three nodes running of an instance of six."""
    with flux_testbed_factory(nodes=3, size=6) as c:
        yield c


def assert_healed(c: ComposeTestbed, timeout: float = 120) -> None:
    """Every broker back, every node's resources up, the overlay `full`."""
    c.wait_ready(timeout)
    assert c.overlay_states() == {k: "full" for k in range(c.nodes)}
    down = c.flux("resource", "list", "--states=down", "--no-header", "--format={nnodes}")
    assert down.stdout.split() == ["0"]


def runs_on(c: ComposeTestbed, node: str) -> None:
    done = c.flux("run", "-N1", "-n1", f"--requires=host:{node}", "hostname", timeout=120)
    assert done.stdout.strip() == node


@pytest.mark.slow
def test_node0_restart_keeps_acknowledged_packets_and_every_broker_rejoins(
    cluster: ComposeTestbed,
) -> None:
    c = cluster
    ds = c.submit("datastore", "--packets", "0", "--fresh")
    for host in ("node0", "node1", "node2"):
        # exits 0 once the datastore has stored and acknowledged its packet
        c.flux(
            "run", "-N1", "-n1", f"--requires=host:{host}",
            "flux", "python", "-m", "conduit", "compute", "0", timeout=120,
        )  # fmt: skip
    before = c.durable_store()
    assert before["packets"] == 3
    assert c.job_state(ds) == "RUN"
    followers = {node: c.started(node) for node in ("node1", "node2")}

    c.restart("node0")
    assert_healed(c)

    # the followers' brokers restarted inside the same containers, by themselves
    assert {node: c.started(node)[0] for node in followers} == {
        node: ident for node, (ident, _) in followers.items()
    }
    assert c.durable_store() == before
    assert c.job_state(ds) == "INACTIVE"  # rank 0's shutdown cancelled it

    resumed = c.submit("datastore", "--packets", "4")
    c.flux(
        "run", "-N1", "-n1", "--requires=host:node2",
        "flux", "python", "-m", "conduit", "compute", "0", timeout=120,
    )  # fmt: skip
    result = c.datastore_output(resumed)
    assert any(
        line.startswith("Resumed 3 packets from an unfinished datastore") for line in result.lines
    )
    final = result.final_store
    assert set(before["store"]) < set(final)
    assert len(final) == 1 + 4  # the test packet, three resumed, one new
    assert result.lines[-2:] == [output.BYE, output.FINISHED]


def test_killed_node_comes_back_by_itself(cluster: ComposeTestbed) -> None:
    # the engine's socket, as the watchdog mounts it (ENGINE_SOCKET, empty: the default)
    assert Path(cluster.engine.api_socket).is_socket(), cluster.engine
    c = cluster
    ident, when = c.started("node2")
    c.kill("node2")  # what `docker kill` does

    wait_until(lambda: c.started("node2")[1] != when, 60, "node2 started again")
    assert_healed(c)
    assert c.started("node2")[0] == ident  # the same container, not a new one
    runs_on(c, "node2")


# Puts one packet with a 4 s timeout; prints how long it took and what it raised.
BOUNDED_PUT = """
import json, time
from conduit.client import Conduit, ConduitError
start = time.monotonic()
try:
    Conduit(timeout=4).put({"during-the-cut": 1})
    outcome = "stored"
except ConduitError as exc:
    outcome = [exc.errno, str(exc)]
print(json.dumps({"seconds": time.monotonic() - start, "outcome": outcome}))
"""


@pytest.mark.slow
def test_node_cut_off_longer_than_the_overlay_timeout_comes_back_by_itself(
    cluster: ComposeTestbed,
) -> None:
    """A datastore's node cut off: puts give up within their timeout; the node heals by
    itself, and the next datastore resumes every packet acknowledged before the cut."""
    c = cluster
    ds = c.submit("datastore", "--packets", "0", "--fresh", host="node2")
    c.wait_datastore(ds)
    c.conduit("put", '{"before-the-cut": 1}', timeout=120)
    ident, when = c.started("node2")
    with c.cut_off("node2"):
        report = json.loads(c.python(BOUNDED_PUT, timeout=60).stdout)
        # rank 0 declares node2 lost once the overlay's timeout has passed
        wait_until(
            lambda: 2 not in (c.testbed.probe() or Probe(0, [2], [])).online,
            90,
            "rank 0 sees node2 lost",
        )
    code, message = report["outcome"]
    assert code == errno.ETIMEDOUT, message
    assert 4 <= report["seconds"] < 5  # its own timeout, not the overlay's

    assert_healed(c)
    # the broker came back inside the container; nothing restarted it from outside
    assert c.started("node2") == (ident, when)
    runs_on(c, "node2")
    # the cut datastore's job died with its broker; the next one resumes its store
    assert c.job_state(ds) == "INACTIVE"
    resumed = c.submit("datastore", "--packets", "2", host="node1")
    c.wait_datastore(resumed)
    c.conduit("put", '{"after-the-cut": 1}', timeout=120)
    result = c.datastore_output(resumed)
    assert result.final_store == {"test": 101, "before-the-cut": 1, "after-the-cut": 1}


def demo(c: ComposeTestbed) -> None:
    """The demo with one compute per running node; it passes and used every node."""
    n = c.nodes
    done = c.conduit(
        "demo", "--sleep", "0", "--computes", str(n),
        "--compute-ranks", ",".join(str(k) for k in range(n)), timeout=300,
    )  # fmt: skip
    assert done.stdout.splitlines()[-1] == f"demo: {n} of {n} compute packets in the final store"
    [submitted] = [line for line in done.stderr.splitlines() if " computes: " in line]
    nodes = set()
    for jobid in submitted.split(": ", 1)[1].split():
        nodes.add(c.job(jobid)["nodelist"])
    assert nodes == {f"node{k}" for k in range(n)}


@pytest.mark.slow
def test_scale_3_to_6_to_3_without_restarting_the_instance(growable: ComposeTestbed) -> None:
    c = growable
    rank0 = c.started("node0")
    # a job survives only if the instance is not restarted
    sleeper = c.submit_command("sleep", "600", host="node0")
    wait_until(lambda: c.job_state(sleeper) == "RUN", 60, "job running")
    demo(c)

    c.scale(6)
    assert c.overlay_states() == {k: "full" for k in range(6)}
    demo(c)

    c.scale(3)
    assert set(c.compose.containers()) == {"node0", "node1", "node2", "watchdog"}
    # rank 0 is `partial`: three of its children are offline
    assert c.overlay_states() == {
        0: "partial", 1: "full", 2: "full", 3: "offline", 4: "offline", 5: "offline"
    }  # fmt: skip
    demo(c)

    assert c.started("node0") == rank0
    assert c.job_state(sleeper) == "RUN"


def test_a_ready_cluster_of_8_has_8_nodes_resources_up(flux_testbed_factory: NewTestbed) -> None:
    with flux_testbed_factory(nodes=8) as c:
        check_8_nodes_up(c)


def check_8_nodes_up(c: ComposeTestbed) -> None:
    # nothing waited beyond what `up` did: ready already means usable
    free = c.flux("resource", "list", "--states=free", "--no-header", "--format={nnodes}")
    down = c.flux("resource", "list", "--states=down", "--no-header", "--format={nnodes}")
    assert (free.stdout.split(), down.stdout.split()) == (["8"], ["0"])
    hosts = c.flux("run", "-N8", "-n8", "hostname", timeout=120).stdout.split()
    assert sorted(hosts) == sorted(f"node{k}" for k in range(8))


def project_state(c: ComposeTestbed) -> dict[str, tuple[str, str]]:
    return {service: c.started(service) for service in [*c.names, "watchdog"]}


@pytest.mark.slow
def test_up_again_recreates_nothing_of_either_of_two_projects(
    flux_testbed_factory: NewTestbed,
) -> None:
    with flux_testbed_factory(nodes=3) as a, flux_testbed_factory(nodes=3) as b:
        jobs = {
            a.project: a.submit_command("sleep", "600"),
            b.project: b.submit_command("sleep", "600"),
        }
        for c in (a, b):
            wait_until(lambda c=c: c.job_state(jobs[c.project]) == "RUN", 60, "job running")
        before = {c.project: project_state(c) for c in (a, b)}

        for c in (a, b, a):  # what `make up PROJECT=a`, `... b`, `... a` run again
            c.testbed.up(3, 3, timeout=300)

        assert {c.project: project_state(c) for c in (a, b)} == before
        for c in (a, b):
            assert c.job_state(jobs[c.project]) == "RUN"


def test_up_with_another_image_says_so_before_replacing_the_instance(
    cluster: ComposeTestbed,
) -> None:
    c = cluster
    client = c.client
    image = c.container("node0").image
    tag = f"test-{secrets.token_hex(4)}"
    other = f"flux-conduit:{tag}"
    image.tag("flux-conduit", tag)  # the same content under another name: compose must recreate
    try:
        c.flux("kvs", "put", "testbed.kept=yes")
        job = c.submit_command("sleep", "600")
        wait_until(lambda: c.job_state(job) == "RUN", 60, "job running")
        before = project_state(c)
        said: list[str] = []
        replaced = Testbed(
            c.project, c.file, compose_command=c.testbed.compose_command, image=other,
            say=said.append, quiet=True, engine=c.engine,
        )  # fmt: skip
        replaced.up(3, 3, timeout=300)
    finally:
        client.images.remove(other, noprune=True)

    assert said == [
        f"up: replacing the running instance {c.project} "
        f"(image {c.testbed.image_ref} -> {other}): 4 containers are recreated, "
        "its running jobs (1) end, the KVS in its state volume is kept"
    ]
    assert all(c.started(s)[0] != before[s][0] for s in before)
    assert c.job_state(job) == "INACTIVE"
    assert c.flux("kvs", "get", "testbed.kept").stdout.strip() == "yes"
