"""What our own tests check of the conduit, written once for every path.

The fixtures and the testbed's API come from the pytest plugin
(conduit.testbed.plugin); these are the assertions about the conduit's
scenario that the native, compose and Podman tests share.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conduit import output
from conduit.testbed.instance import Instance

REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "module" / "conduit.so"


def compute_keys(store: Mapping[str, Any], plain_ids: list[str]) -> list[str]:
    """The keys of the computes' packets in a store (one per compute)."""
    return [k for k in store if any(k.endswith(f"-{p}") for p in plain_ids)]


def check_attach_output(result: output.DatastoreOutput, plain_ids: list[str]) -> None:
    """A finished datastore's attach output, line by line, for these computes' packets."""
    lines = result.lines
    assert lines[:4] == [output.STARTING, output.LOADED, output.INITIALIZED, output.RUNNING]
    assert lines[-2:] == [output.BYE, output.FINISHED]
    body = lines[4:-2]
    # "Waiting for a packet", then the store with that packet, for each packet
    assert body[0::2] == [output.WAITING] * (len(plain_ids) + 1), body
    stores = [json.loads(line) for line in body[1::2]]
    assert stores[0] == {"test": 101}
    assert len(stores) == 1 + len(plain_ids)
    for before, after in zip(stores, stores[1:]):
        [added] = after.keys() - before.keys()
        assert after == {**before, added: "os.time"}
    final = stores[-1]
    for plain in plain_ids:
        assert len(compute_keys(final, [plain])) == 1, f"no packet of compute {plain} in {final}"


@dataclass
class Scenario:
    datastore: str
    computes: list[str]
    result: output.DatastoreOutput


def run_scenario(
    instance: Instance, datastore_host: str | None, compute_hosts: list[str], **submit: Any
) -> Scenario:
    """The seed scenario: a datastore, one compute per host, the attach stream checked.

    Args:
        datastore_host, compute_hosts: where the datastore and each compute must run.
        submit: passed to every submit (e.g. user=...).
    """
    packets = ["--packets", str(len(compute_hosts))]
    ds = instance.submit("datastore", *packets, "--fresh", host=datastore_host, **submit)
    user = submit.get("user")
    with instance.attach(ds, user=user) as stream:
        stream.until(lambda line: line == output.INITIALIZED, timeout=120)
        computes = [instance.submit("compute", "0", host=h, **submit) for h in compute_hosts]
        status = stream.finish(timeout=120)
    assert status == 0, f"attach {ds} exited {status}: {stream.lines}\n{stream.stderr()}"
    result = output.parse("\n".join(stream.lines))
    check_attach_output(result, [instance.plain(j) for j in computes])
    for jobid, host in zip(computes, compute_hosts):
        info = instance.wait_job(jobid, user=user)
        assert (info["result"], info["nodelist"]) == ("COMPLETED", host), info
    info = instance.wait_job(ds, user=user)
    assert info["result"] == "COMPLETED", info
    if datastore_host:
        assert info["nodelist"] == datastore_host
    return Scenario(ds, computes, result)


def datastore(inst: Instance, *args: str, rank: int = 1, fresh: bool = True) -> str:
    """Submit `conduit datastore ARGS...` on `rank` (fresh unless asked); wait until it serves."""
    ds = inst.submit("datastore", *(["--fresh"] if fresh else []), *args, rank=rank)
    inst.wait_datastore(ds)
    return ds


def stop(inst: Instance, ds: str) -> output.DatastoreOutput:
    """Cancel datastore `ds`; its attach output."""
    inst.flux("cancel", ds)
    return output.parse(inst.wait_output(ds).stdout)


def while_stopped(inst: Instance, code: str) -> Any:
    """Run `code` while a datastore on rank 2 is stopped (SIGSTOP); the JSON it printed."""
    ds = datastore(inst, "--packets", "0", rank=2)
    inst.flux("job", "kill", "--signal=SIGSTOP", ds)
    try:
        return json.loads(inst.python(code, timeout=60).stdout)
    finally:
        inst.flux("job", "kill", "--signal=SIGCONT", ds)
        stop(inst, ds)


def start_datastore(inst: Instance, stream: str, *args: str, rank: int) -> str:
    """Submit a datastore of `stream` on `rank` and wait until it serves; its job id."""
    jobid = inst.submit("datastore", "--stream", stream, *args, rank=rank)
    inst.wait_datastore(jobid, stream=stream)
    return jobid


def module_stats(inst: Instance, name: str, rank: int) -> dict[str, Any]:
    """`flux module stats NAME` on `rank`, as a user types it."""
    done = inst.flux("exec", "-r", str(rank), "flux", "module", "stats", name)
    return dict(json.loads(done.stdout))


def run_bench(inst: Instance, producers: int, packets: int) -> dict[str, Any]:
    """`conduit bench` of every path, one round, in the instance; its JSON results.

    Asserts what every bench must give: each path delivered every packet,
    none lost, and the consumer read the followed run.
    """
    path = "/tmp/conduit-bench-test.json"
    inst.flux(
        "python", "-m", "conduit", "bench", "--producers", str(producers),
        "--packets", str(packets), "--repeat", "1", "--json", path, timeout=300,
    )  # fmt: skip
    results: dict[str, Any] = json.loads(inst.run("cat", path).stdout)
    runs = {r["kind"]: r for r in results["runs"]}
    assert sorted(runs) == ["batched", "conduit", "follow", "loop", "raw"]
    for run in runs.values():
        assert (run["packets"], run["lost"], run["errors"]) == (producers * packets, 0, 0), run
    assert results["consumer"][str(producers)]["packets"] == producers * packets
    return results
