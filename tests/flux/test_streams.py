"""Named streams on a real Flux instance: several datastores at once, each its own store.

Each test names its own streams, so that they do not meet the default
stream of the other tests in the shared instance.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from conduit.testbed.native import NativeInstance
from conduit.testbed.waiting import wait_until
from tests.checks import REPO, module_stats, start_datastore

pytestmark = pytest.mark.flux


def producer(inst: NativeInstance, stream: str, rank: int, count: int) -> subprocess.Popen[str]:
    """`conduit produce` on `rank` (a process, not a job, so that it takes no core slot)."""
    argv = inst.command(
        "flux", "exec", "-r", str(rank), "flux", "python", "-m", "conduit", "produce",
        "--stream", stream, "--count", str(count), "--in-flight", "8", "--retry-for", "90",
    )  # fmt: skip
    return subprocess.Popen(
        argv, env=inst.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    return dict(json.loads(out.splitlines()[-1]))


def stored(inst: NativeInstance, stream: str) -> dict[str, Any]:
    return dict(json.loads(inst.conduit("store", "--stream", stream).stdout))


def test_two_streams_each_keep_their_own_and_one_restarts_alone(
    flux_instance: NativeInstance,
) -> None:
    inst = flux_instance
    alpha = start_datastore(inst, "alpha", "--packets", "0", "--fresh", "--quiet", rank=1)
    beta = start_datastore(inst, "beta", "--packets", "0", "--fresh", "--quiet", rank=2)
    procs = {
        "alpha": [producer(inst, "alpha", r, 3000) for r in (0, 2)],
        "beta": [producer(inst, "beta", r, 3000) for r in (0, 1)],
    }
    wait_until(
        lambda: module_stats(inst, "conduit-alpha", 1)["stored"] >= 1000, 60, "alpha storing 1000"
    )
    inst.flux("job", "kill", "--signal=SIGKILL", alpha)
    assert inst.wait_output(alpha).returncode != 0
    restarted = inst.submit("datastore", "--stream", "alpha", "--packets", "0", "--quiet", rank=0)
    reports = {s: [report(p) for p in ps] for s, ps in procs.items()}
    stores = {s: stored(inst, s) for s in procs}
    table = {line.split()[0]: line.split() for line in inst.conduit("status").stdout.splitlines()}
    inst.flux("cancel", restarted, beta)
    resumed = inst.wait_output(restarted).stdout
    assert "Resumed " in resumed and "conduit.streams.alpha.log" in resumed, resumed
    for stream, rs in reports.items():
        assert all(r["acked"] == 3000 and r["errors"] == {} for r in rs), rs
        want = {f"{r['producer']}-{seq}" for r in rs for seq in range(1, 3001)}
        assert set(stores[stream]["store"]) == want, stream
        assert stores[stream]["packets"] == 6000
    # a resumed stream's STORED counts the packets it resumed, as its store does
    assert (table["alpha"][1], table["alpha"][5]) == ("running", "6000")
    # alpha's producers had to resend; beta's were never refused
    assert sum(r["retries"] for r in reports["alpha"]) > 0
    assert sum(r["retries"] for r in reports["beta"]) == 0


def test_streams_on_one_rank_module_stats_status_and_a_second_datastore(
    flux_instance: NativeInstance,
) -> None:
    inst = flux_instance
    one = start_datastore(inst, "one", "--packets", "0", "--fresh", rank=1)
    two = start_datastore(inst, "two", "--packets", "0", "--fresh", rank=1)
    inst.conduit("put", "--stream", "one", '{"a": 1}', '{"b": 2}')
    inst.conduit("put", "--stream", "two", '{"c": 3}')
    again = inst.flux("run", "-N1", "--requires=rank:2", "flux", "python", "-m", "conduit",
                      "datastore", "--stream", "one", check=False)  # fmt: skip
    stats = {name: module_stats(inst, f"conduit-{name}", 1) for name in ("one", "two")}
    status = json.loads(inst.conduit("status", "--json").stdout)
    table = inst.conduit("status").stdout
    stores = {name: stored(inst, name)["store"] for name in ("one", "two")}
    inst.flux("cancel", one, two)
    for jobid in (one, two):
        inst.wait_output(jobid)

    assert stores == {"one": {"a": 1, "b": 2}, "two": {"c": 3}}
    assert (stats["one"]["name"], stats["one"]["stored"], stats["one"]["held"]) == (
        "conduit-one",
        2,
        0,
    )
    assert (stats["two"]["name"], stats["two"]["stored"]) == ("conduit-two", 1)
    assert again.returncode == 1
    assert "already serves stream one on rank 1; cancel it first" in again.stderr
    by_name = {s["stream"]: s for s in status["streams"]}
    for name, jobid in (("one", one), ("two", two)):
        s = by_name[name]
        assert (s["state"], s["module"], s["datastore"]["rank"]) == (
            "running",
            f"conduit-{name}",
            1,
        )
        assert s["datastore"]["jobid"] == int(inst.flux("job", "id", "--to=dec", jobid).stdout)
        assert s["stats"]["stored"] == len(stores[name])
    lines = {line.split()[0]: line.split() for line in table.splitlines()}
    assert lines["STREAM"][:3] == ["STREAM", "STATE", "RANK"]
    assert lines["one"][1:3] == ["running", "1"]


def test_a_stream_name_that_cannot_be_a_service_is_refused(flux_instance: NativeInstance) -> None:
    done = flux_instance.conduit("put", "--stream", "a.b", '{"a": 1}', check=False)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("conduit put: 'a.b' cannot name a stream")


def test_default_stream_module_stats_are_the_conduits_own(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--packets", "0", "--fresh", rank=2)
    flux_instance.wait_datastore(ds)
    flux_instance.conduit("put", '{"x": 1}')
    stats = module_stats(flux_instance, "conduit", 2)
    flux_instance.flux("cancel", ds)
    flux_instance.wait_output(ds)
    assert stats["name"] == "conduit"
    assert (stats["attached"], stats["stored"], stats["held"], stats["rejected"]) == (True, 1, 0, 0)


def test_backlog_packets_is_the_modules_limit_and_backlog_its_old_name(
    flux_instance: NativeInstance,
) -> None:
    inst = flux_instance
    limits = {}
    for arg in ("backlog-packets=7", "backlog=9"):
        ds = start_datastore(inst, "limits", "--packets", "0", "--fresh", "--module-arg", arg,
                             rank=2)  # fmt: skip
        limits[arg] = module_stats(inst, "conduit-limits", 2)["backlog_packets"]
        inst.flux("cancel", ds)
        inst.wait_output(ds)
    inst.flux("kvs", "unlink", "-f", "conduit.streams.limits.datastore")
    put = inst.conduit("put", "--stream", "limits", "--timeout", "1", '{"a": 1}', check=False)
    assert limits == {"backlog-packets=7": 7, "backlog=9": 9}
    assert put.returncode == 1
    [line] = put.stderr.splitlines()
    assert "(KVS key conduit.streams.limits.datastore)" in line
    assert line.endswith("flux python -m conduit datastore --stream limits"), line


def test_a_log_in_the_old_layout_is_refused_in_one_line(flux_instance: NativeInstance) -> None:
    inst = flux_instance
    inst.flux("kvs", "put", "--raw", "conduit.streams.flat.log.0=-")  # a segment straight under log
    refusal = (
        "stream flat: the log at KVS conduit.streams.flat.log was written by "
        "an older conduit, one segment a key; start the stream afresh with --fresh"
    )
    ds = inst.submit("datastore", "--stream", "flat", "--packets", "1", "--quiet", rank=1)
    done = inst.wait_output(ds)
    assert done.returncode == 1
    assert f"conduit datastore: {refusal}" in done.stderr.splitlines()
    # a consumer is told so at once, rather than waiting for a segment that never comes
    follow = inst.conduit("follow", "flat", "--wait", "60", check=False, timeout=30)
    assert (follow.returncode, follow.stderr.strip()) == (1, f"conduit follow: {refusal}")
    fresh = inst.submit("datastore", "--stream", "flat", "--packets", "1", "--fresh", "--quiet",
                        rank=1)  # fmt: skip
    inst.conduit("put", "--stream", "flat", '{"a": 1}')
    assert inst.wait_output(fresh).returncode == 0
