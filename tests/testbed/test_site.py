"""The testbed as a small Flux site: shared /data, several users, MPI, the site's config.

What README.md's "Run your own workflow", "Several users", "MPI" and "Your
site's config" promise, from the host as a user types it (`docker compose
exec [-u alice] node0 ...`).  Most tests share the session's testbed of 3
nodes (its /data is a directory of its own, `cluster.data`); the site
config and the munge key need a second cluster.  They skip where Docker,
Compose v2 or the base image is missing (the plugin's fixtures).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import secrets
import tarfile
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from conduit import output
from conduit.errors import IN_YOUR_OWN_INSTANCE
from conduit.testbed.cluster import ComposeTestbed
from conduit.testbed.errors import TestbedError
from conduit.testbed.plugin import NewTestbed
from conduit.testbed.waiting import wait_until
from tests.checks import REPO, check_attach_output

pytestmark = pytest.mark.compose

NODES = ["node0", "node1", "node2"]
EXAMPLES = REPO / "docs" / "examples"
MUNGE_KEY = "/etc/munge/munge.key"


def unique(stem: str) -> str:
    return f"{stem}-{secrets.token_hex(3)}"


def uid(cluster: ComposeTestbed, user: str) -> int:
    return int(cluster.run("id", "-u", user).stdout)


def refused(done: Any) -> str:
    """The stderr of a command that must have failed."""
    assert done.returncode != 0, f"not refused: {done.args}\n{done.stdout}"
    return str(done.stderr)


# -- the shared directory --------------------------------------------------


def test_a_file_written_by_a_job_on_node2_is_read_on_node0_and_on_the_host(
    flux_testbed: ComposeTestbed,
) -> None:
    c, name = flux_testbed, unique("from-node2")
    # submitted from /data (the nodes' working directory), the job runs there
    c.flux("run", "-N1", "-n1", "--requires=host:node2", "sh", "-c", f"pwd; hostname > {name}")
    assert c.run("cat", f"/data/{name}", node="node0").stdout == "node2\n"
    assert (c.data / name).read_text() == "node2\n"
    where = c.flux("run", "-N3", "pwd").stdout.split()
    assert where == ["/data"] * 3


def test_a_datastores_save_file_appears_on_the_host(flux_testbed: ComposeTestbed) -> None:
    c, name = flux_testbed, unique("store") + ".json"
    ds = c.submit("datastore", "--packets", "2", "--fresh", "--save", name, host="node2")
    c.wait_datastore(ds)
    c.flux(
        "run", "-N1", "-n1", "--requires=host:node1",
        "flux", "python", "-m", "conduit", "put", '{"energy": 1.5}', '{"step": 2}',
    )  # fmt: skip
    c.datastore_output(ds)
    assert json.loads((c.data / name).read_text()) == {"energy": 1.5, "step": 2}


# -- several users ----------------------------------------------------------


def test_a_guests_job_runs_as_the_guest_on_every_node_and_her_files_are_hers(
    flux_testbed: ComposeTestbed,
) -> None:
    c, tag = flux_testbed, unique("mine")
    done = c.flux(
        "run", "-N3", "sh", "-c", f'id -un; touch "/data/alice/{tag}-$(hostname)"', user="alice"
    )  # fmt: skip
    assert done.stdout.split() == ["alice"] * 3
    alice = uid(c, "alice")
    assert (c.data / "alice").stat().st_uid == alice
    for node in NODES:
        assert (c.data / "alice" / f"{tag}-{node}").stat().st_uid == alice


@pytest.fixture
def alices_job(flux_testbed: ComposeTestbed) -> Iterator[str]:
    """A job of alice's that runs on node1 and has said something; cancelled after the test."""
    c = flux_testbed
    job = c.flux(
        "submit", "-N1", "-n1", "--requires=host:node1",
        "sh", "-c", "echo alices-secret; sleep 300", user="alice",
    ).stdout.strip()  # fmt: skip
    wait_until(
        lambda: "alices-secret" in c.flux("job", "eventlog", "-p", "output", job).stdout,
        60,
        f"alice's job {job} writing its output",
    )
    yield job
    c.flux("cancel", job, user="alice")
    c.wait_job(job)


def test_bob_cannot_cancel_attach_to_or_read_the_eventlog_of_alices_job(
    flux_testbed: ComposeTestbed, alices_job: str
) -> None:
    c, job = flux_testbed, alices_job
    cancel = refused(c.flux("cancel", job, user="bob", check=False))
    assert "guests can only raise exceptions on their own jobs" in cancel
    # flux-core 0.88: a guest's first attach to another's job may wait instead of
    # failing (README "Several users"); it shows nothing of the job either way.
    first = c.run(
        "timeout", "-s", "KILL", "10", "flux", "job", "attach", job, user="bob", check=False
    )
    assert first.returncode == 137 or "that is not your job" in refused(first), first
    assert "alices-secret" not in first.stdout + first.stderr
    attach = refused(c.flux("job", "attach", job, user="bob", check=False, timeout=30))
    assert "that is not your job" in attach
    for path in ("eventlog", "output", "exec"):
        done = c.flux("job", "eventlog", "-p", path, job, user="bob", check=False, timeout=30)
        assert "Operation not permitted" in refused(done)
    assert c.job_state(job) == "RUN"
    # alice herself may
    assert "alices-secret" in c.flux("job", "eventlog", "-p", "output", job, user="alice").stdout


def test_a_guest_cannot_load_or_remove_a_module_change_the_config_or_stop_the_instance(
    flux_testbed: ComposeTestbed,
) -> None:
    c = flux_testbed
    for argv, said in [
        (["module", "load", "conduit"], "Request requires owner credentials"),
        (["module", "remove", "sched-simple"], "Request requires owner credentials"),
        (["config", "reload"], "Request requires owner credentials"),
        (["shutdown"], "Operation not permitted"),
    ]:
        assert said in refused(c.flux(*argv, user="bob", check=False)), argv
    modules = c.flux("module", "list").stdout.split()
    assert "sched-simple" in modules and "conduit" not in modules
    assert c.flux("getattr", "size").stdout.strip() == "3"
    assert c.flux("run", "-N3", "true", user="bob").returncode == 0


@pytest.mark.parametrize(
    "command", [["put", '{"energy": 1.5}'], ["datastore", "--packets", "1"]], ids=["put", "ds"]
)
def test_a_guests_conduit_command_fails_with_one_line_that_says_why_and_what_to_do(
    flux_testbed: ComposeTestbed, command: list[str]
) -> None:
    c = flux_testbed
    done = c.flux(
        "run", "-N1", "-n1", "flux", "python", "-m", "conduit", *command,
        user="alice", check=False,
    )  # fmt: skip
    said = refused(done).splitlines()
    assert said[-1] == "flux-job: task(s) exited with exit code 1"
    [line] = said[:-1]
    assert line == (
        f"conduit {command[0]}: the conduit of this Flux instance belongs to its owner, "
        "fluxuser; alice is a guest here, so the instance refuses the conduit's requests "
        f"(EPERM); {IN_YOUR_OWN_INSTANCE}"
    )


def test_the_demo_in_alices_own_allocation(flux_testbed: ComposeTestbed) -> None:
    """`docker compose exec -u alice node0 flux alloc -N2 flux python -m conduit demo`."""
    c = flux_testbed
    demo = c.flux(
        "alloc", "-N2", "flux", "python", "-m", "conduit", "demo", user="alice", timeout=300
    )
    *attach, last = demo.stdout.splitlines()
    assert last == "demo: 5 of 5 compute packets in the final store"
    [submitted] = [line for line in demo.stderr.splitlines() if " computes: " in line]
    plain = [c.plain(j) for j in submitted.split(": ", 1)[1].split()]
    check_attach_output(output.parse("\n".join(attach)), plain)


BATCH = """\
#!/bin/sh
# alice's workflow in her own instance: a datastore, a put, the store in /data/alice.
set -e
for _ in $(seq 120); do [ -e go ] && break; sleep 0.5; done
DS=$(flux submit -N1 -n1 --requires=rank:0 flux python -m conduit datastore \\
    --packets 2 --fresh --save store.json)
flux run -N1 -n1 --requires=rank:1 flux python -m conduit put '{"energy": 1.5}' '{"step": 2}'
flux job attach $DS
"""


def test_alices_batch_job_runs_her_own_conduit_and_bob_cannot_reach_her_instance(
    flux_testbed: ComposeTestbed,
) -> None:
    c = flux_testbed
    work = unique("work")
    c.run("mkdir", f"/data/alice/{work}", user="alice")
    c.run("sh", "-c", f"cat > /data/alice/{work}/workflow.sh", input=BATCH, user="alice")
    job = c.flux(
        "batch", "-N2", f"--cwd=/data/alice/{work}", "--output=workflow.out",
        f"/data/alice/{work}/workflow.sh", user="alice",
    ).stdout.strip()  # fmt: skip
    wait_until(lambda: c.job_state(job) == "RUN", 120, f"alice's batch job {job} running")
    first = c.flux("hostlist", "--nth=0", c.job(job)["nodelist"]).stdout.strip()
    uri = c.flux("uri", "--local", job, user="alice").stdout.strip()

    def up() -> bool:
        done = c.flux(
            "proxy", uri, "flux", "getattr", "size", node=first, user="alice", check=False
        )
        return done.stdout.strip() == "2"

    wait_until(up, 60, f"alice's instance {uri} answering her")
    done = c.flux("proxy", uri, "flux", "getattr", "size", node=first, user="bob", check=False)
    assert "Permission denied" in refused(done)

    c.run("touch", f"/data/alice/{work}/go", user="alice")
    assert c.wait_job(job, timeout=180)["result"] == "COMPLETED"
    store = c.data / "alice" / work / "store.json"
    assert json.loads(store.read_text()) == {"energy": 1.5, "step": 2}
    assert store.stat().st_uid == uid(c, "alice")
    assert "Bye bye!" in (c.data / "alice" / work / "workflow.out").read_text()


# -- MPI --------------------------------------------------------------------

HELLO = re.compile(r"^rank (\d+) of (\d+) on (\S+) \(sum of ranks (\d+)\)$")


def test_mpi_hello_runs_over_three_nodes(flux_testbed: ComposeTestbed) -> None:
    """Six ranks over three nodes; a hang in MPI_Finalize is tolerated, and said.

    The image's MPICH 4.0.2 (ch4:ucx, UCX 1.13 over TCP) hangs in
    MPI_Finalize in some runs here (a rank waits in UCX's disconnect for a
    peer that has gone on to the final PMI barrier; README "MPI across
    nodes"), after every rank has reported.  The test checks the reports;
    a job that has not ended 30 s after them is cancelled with a warning.
    """
    c, name = flux_testbed, unique("mpi_hello")
    (c.data / f"{name}.c").write_text((EXAMPLES / "mpi_hello.c").read_text())
    c.run("mpicc", "-o", name, f"{name}.c")
    job = c.flux("submit", "-N3", "-n6", "-t", "2m", f"./{name}").stdout.strip()
    with c.attach(job) as stream:
        stream.until(lambda _: sum(bool(HELLO.match(x)) for x in stream.lines) == 6, 120)
    said = [m for m in map(HELLO.match, stream.lines) if m]
    ranks = {int(m[1]): m[3] for m in said}
    assert sorted(ranks) == list(range(6))
    assert {int(m[2]) for m in said} == {6} and {int(m[4]) for m in said} == {15}
    # two ranks per node (2 cores each), in rank order: three different nodes
    assert [ranks[k] for k in range(6)] == [n for n in NODES for _ in range(2)]
    done = c.flux("job", "wait-event", "-t", "30", job, "clean", check=False, timeout=60)
    if done.returncode != 0:
        c.flux("cancel", job)
        warnings.warn(f"MPI job {job}: every rank reported, then MPI_Finalize hung", stacklevel=1)
    else:
        assert c.job(job)["result"] == "COMPLETED"


# -- munge keys and the site's config (a cluster of their own) -------------


def munge_key_sum(cluster: ComposeTestbed, node: str = "node0") -> str:
    return cluster.run("sudo", "-n", "sha256sum", MUNGE_KEY, node=node).stdout.split()[0]


class Chunks(io.RawIOBase):
    """A file over an iterator of byte chunks (the docker SDK's image.save())."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.left = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.left:
            self.left = next(self.chunks, b"")
            if not self.left:
                return 0
        n = min(len(buffer), len(self.left))
        buffer[:n], self.left = self.left[:n], self.left[n:]
        return n


def munge_files_in_layers(image: Any) -> set[str]:
    """sha256 of every file under etc/munge/ in every layer of a docker SDK image."""
    sums = set()
    with tarfile.open(fileobj=io.BufferedReader(Chunks(iter(image.save()))), mode="r|") as saved:
        for member in saved:
            if not member.name.endswith("layer.tar"):
                continue
            layer = saved.extractfile(member)
            assert layer is not None
            with tarfile.open(fileobj=layer, mode="r|") as files:
                for f in files:
                    if f.isfile() and f.name.startswith("etc/munge/"):
                        content = files.extractfile(f)
                        assert content is not None
                        sums.add(hashlib.sha256(content.read()).hexdigest())
    return sums


def test_site_config_queues_a_bad_file_and_a_munge_key_of_each_clusters_own(
    flux_testbed: ComposeTestbed, flux_testbed_factory: NewTestbed
) -> None:
    if flux_testbed.engine.name != "docker":
        pytest.skip("the image's layers are read with Docker's image save")
    with flux_testbed_factory(nodes=3, site_files=[EXAMPLES / "queues.toml"]) as c:
        # munge: one key per cluster, the same on its nodes, in none of the image's layers
        key = munge_key_sum(c)
        assert munge_key_sum(c, "node2") == key
        assert munge_key_sum(flux_testbed) != key
        in_layers = munge_files_in_layers(c.container("node0").image)
        assert in_layers, "the base image's build-time key is in a layer"
        assert key not in in_layers and munge_key_sum(flux_testbed) not in in_layers

        # the example's queues: debug on node0, batch (the default) on node1 and node2
        def nodes(*argv: str) -> list[str]:
            return c.flux("run", *argv, "hostname").stdout.split()

        assert nodes("-q", "debug", "-n2") == ["node0", "node0"]
        assert sorted(nodes("-q", "batch", "-N2")) == ["node1", "node2"]
        assert sorted(set(nodes("-n4"))) == ["node1", "node2"]
        limit = refused(c.flux("run", "-q", "debug", "-N2", "true", check=False))
        assert "exceeds policy limit of 1 for queue debug" in limit

        # a bad file: make up fails with the broker's error, the cluster is as it was
        sleeper = c.submit_command("sleep", "300", host="node1")
        wait_until(lambda: c.job_state(sleeper) == "RUN", 60, "a job running")
        ids = {node: c.container(node).id for node in NODES}
        bad = c.site / "zz-bad.toml"
        for text, said in [
            ("[queues.x\n", f"broker: Config file error: {bad}:1: "),
            ("[queues.x]\nrequires = 3\n", "job-manager: config: error parsing [queues.x]"),
        ]:
            bad.write_text(text)
            with pytest.raises(TestbedError) as error:
                c.testbed.up(3, 3, 300)
            assert len(str(error.value).splitlines()) == 1
            assert f"the site config in {c.site} is refused: {said}" in str(error.value)
            assert {node: c.container(node).id for node in NODES} == ids
            assert c.job_state(sleeper) == "RUN"
        bad.unlink()

        # kept across a restart (and an unchanged `up` recreates nothing)
        c.up()
        assert {node: c.container(node).id for node in NODES} == ids
        c.testbed.restart(300)
        assert nodes("-q", "debug") == ["node0"]
