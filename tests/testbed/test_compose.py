"""The compose testbed: one Flux instance of containers node0 .. node<N-1>.

Everything goes through `docker compose exec NODE flux ...` from the host,
as a user would type it; the docker SDK gives container state and
testinfra runs commands inside a node.  The fixtures (conduit.testbed.plugin)
skip these tests where Docker, Compose v2 or the base image is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from conduit import output
from conduit.testbed.cluster import ComposeTestbed
from conduit.testbed.readiness import parse_idset as idset
from tests.checks import check_attach_output, run_bench, run_scenario

pytestmark = pytest.mark.compose

NODES = ["node0", "node1", "node2"]


def test_nodes_healthy_overlay_full_resources_of_three_nodes(
    flux_testbed: ComposeTestbed,
) -> None:
    for k, node in enumerate(NODES):
        container = flux_testbed.container(node)
        assert container.attrs["Config"]["Hostname"] == node
        assert flux_testbed.health(node) == "healthy"
        host = flux_testbed.host(node)
        assert host.user().name == "fluxuser"
        assert host.check_output("flux getattr rank") == str(k)
        assert host.check_output("flux getattr size") == "3"

    assert flux_testbed.overlay_states() == {0: "full", 1: "full", 2: "full"}

    R = json.loads(flux_testbed.flux("resource", "R").stdout)
    [entry] = R["execution"]["R_lite"]
    assert idset(entry["rank"]) == [0, 1, 2]
    nproc = int(flux_testbed.host("node0").check_output("nproc"))
    assert idset(entry["children"]["core"]) == list(range(nproc))
    hosts = flux_testbed.flux("hostlist", "--expand", *R["execution"]["nodelist"]).stdout
    assert hosts.split() == NODES
    free = flux_testbed.flux("resource", "list", "--states=free", "--no-header", "-o", "{nnodes}")
    assert free.stdout.split() == ["3"]


def test_certificate_shared_private_and_not_in_the_image(flux_testbed: ComposeTestbed) -> None:
    sums = set()
    for node in NODES:
        cert = flux_testbed.host(node).file("/etc/flux/curve/curve.cert")
        assert (cert.user, cert.mode) == ("fluxuser", 0o600)
        sums.add(cert.sha256sum)
    assert len(sums) == 1, "the nodes do not share one certificate"
    image = flux_testbed.container("node0").image
    listing = flux_testbed.client.containers.run(
        image, entrypoint=["ls", "-A", "/etc/flux/curve"], remove=True
    )
    assert listing == b""


def test_module_installed_in_the_image_loads_by_name_on_a_rank_without_datastore(
    flux_testbed: ComposeTestbed,
) -> None:
    node1 = flux_testbed.host("node1")
    # `make install` in the image: the broker's module path and Flux's Python path
    assert node1.file("/usr/lib/flux/modules/conduit.so").is_file
    where = node1.check_output("cd / && flux python -c 'import conduit; print(conduit.__file__)'")
    assert where.startswith("/usr/lib/flux/python3")
    assert node1.run("flux python -m conduit --help").rc == 0

    assert not flux_testbed.module_loaded(1)
    node1.check_output("flux module load conduit")
    try:
        assert flux_testbed.module_loaded(1)
    finally:
        node1.check_output("flux module remove conduit")
    assert not flux_testbed.module_loaded(1)


def test_scenario_over_all_nodes(flux_testbed: ComposeTestbed) -> None:
    run_scenario(flux_testbed, None, ["node0", "node1", "node2", "node0", "node1"])


def test_datastore_on_node2_computes_on_node0_and_node1(flux_testbed: ComposeTestbed) -> None:
    run_scenario(flux_testbed, "node2", ["node0", "node1", "node0", "node1", "node0"])


@pytest.mark.flux_testbed(nodes=3, size=8)
def test_bench_runs_on_the_nodes_that_are_up(flux_testbed: ComposeTestbed) -> None:
    """Room for 8 nodes, 3 started (as `make up`): no producer waits for a node not started."""
    assert int(flux_testbed.flux("getattr", "size").stdout) == 8
    results = run_bench(flux_testbed, producers=4, packets=50)
    assert results["config"]["ranks"] == 3


def test_node1_stopped_during_a_run_then_rejoins(flux_testbed: ComposeTestbed) -> None:
    """The conduit completes when node1 stops in the middle of a run.

    A datastore on node0 waits for 6 packets; 5 computes (two on node1,
    which sleep after their put) have stored theirs when node1 is stopped
    (`docker compose stop node1`).  The datastore keeps running with its
    store; the two computes on node1 end with a Flux job exception instead
    of completing (flux-core 0.88: type=exec severity=0, note
    "flux_job_event_watch_get: Function not implemented", from the job
    shell of the broker that shut down).  node1 is started again, its
    broker rejoins (overlay full, every node healthy), a sixth compute on
    node1 completes the run (all 6 packets, `Bye bye!`), and a new scenario
    over all nodes passes.
    """
    cluster = flux_testbed
    ds = cluster.submit("datastore", "--packets", "6", "--fresh", host="node0")
    with cluster.attach(ds) as stream:
        stream.until(lambda line: line == output.INITIALIZED, timeout=120)
        hosts = ["node0", "node1", "node2", "node0", "node1"]
        computes = [
            cluster.submit("compute", "600" if h == "node1" else "0", host=h) for h in hosts
        ]
        on_node1 = [j for j, h in zip(computes, hosts) if h == "node1"]
        stream.until(lambda line: line.startswith("{") and len(json.loads(line)) == 6, 120)
        for jobid in on_node1:
            assert cluster.job(jobid)["state"] == "RUN"

        cluster.stop("node1")
        assert cluster.container("node1").status == "exited"
        for jobid in on_node1:
            info = cluster.wait_job(jobid)
            assert info["result"] != "COMPLETED", info
            exception = info.get("exception", {})
            assert exception.get("occurred") and exception.get("severity") == 0, info
            assert exception.get("type") == "exec", info
        assert cluster.overlay_states()[1] != "full"
        assert cluster.job(ds)["state"] == "RUN"

        cluster.start("node1")
        cluster.flux("overlay", "status", "--summary", "--wait=full", "--timeout=120s", timeout=180)
        cluster.wait_healthy(timeout=120)
        assert cluster.overlay_states() == {0: "full", 1: "full", 2: "full"}

        last = cluster.submit("compute", "0", host="node1")
        status = stream.finish(timeout=120)
    assert status == 0, f"attach {ds} exited {status}: {stream.lines}\n{stream.stderr()}"
    plain_ids = [cluster.plain(j) for j in [*computes, last]]
    check_attach_output(output.parse("\n".join(stream.lines)), plain_ids)
    assert cluster.wait_job(last)["result"] == "COMPLETED"

    run_scenario(cluster, None, ["node0", "node1", "node2", "node0", "node1"])


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 8], ids=["N=1", "N=8"])
def test_nodes_n_make_one_instance_and_the_demo_passes(
    flux_testbed_factory: Callable[..., Any], n: int
) -> None:
    with flux_testbed_factory(nodes=n) as sized_cluster:
        check_n_nodes_and_the_demo(sized_cluster, n)


def check_n_nodes_and_the_demo(sized_cluster: ComposeTestbed, n: int) -> None:
    assert sized_cluster.overlay_states() == {k: "full" for k in range(n)}
    for k in range(n):
        assert sized_cluster.health(f"node{k}") == "healthy"
    demo = sized_cluster.conduit("demo", "--sleep", "0", timeout=300)
    result = output.parse(demo.stdout)
    want = max(5, n)  # the demo's default: one compute per node, at least 5
    assert result.lines[-1] == f"demo: {want} of {want} compute packets in the final store"
    [submitted] = [line for line in demo.stderr.splitlines() if " computes: " in line]
    computes = submitted.split(": ", 1)[1].split()
    nodes = {sized_cluster.job(j)["nodelist"] for j in computes}
    assert nodes == {f"node{k}" for k in range(n)}
