"""The data conduit on a real Flux instance (three brokers)."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import time

import pytest

from conduit import output
from conduit.testbed.native import NativeInstance
from tests.checks import MODULE, REPO, compute_keys

pytestmark = pytest.mark.flux


def keys_of(inst: NativeInstance, store: dict[str, object], jobids: list[str]) -> list[str]:
    """The store keys of these compute jobs' packets (one per compute)."""
    return compute_keys(store, [inst.plain(j) for j in jobids])


def test_demo_end_to_end(flux_instance: NativeInstance) -> None:
    demo = flux_instance.flux(
        "python", "-m", "conduit", "demo", "--computes", "5", "--sleep", "0", timeout=180
    )
    result = output.parse(demo.stdout)
    assert result.lines[:4] == [output.STARTING, output.LOADED, output.INITIALIZED, output.RUNNING]
    assert result.waits == 6  # the test packet, then five computes
    assert result.stores[0] == {"test": 101}
    assert len(result.final_store) == 6
    assert all(v == "os.time" for k, v in result.final_store.items() if k != "test")
    assert result.lines[-3:] == [
        output.BYE,
        output.FINISHED,
        "demo: 5 of 5 compute packets in the final store",
    ]


def test_datastore_on_rank2_computes_on_ranks_0_and_1(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--packets", "4", "--fresh", rank=2)
    location = flux_instance.wait_datastore(ds)
    assert location["rank"] == 2
    computes = [flux_instance.submit("compute", "0", rank=r) for r in (0, 1, 0, 1)]
    result = flux_instance.datastore_output(ds)
    for jobid in computes:
        done = flux_instance.wait_output(jobid)
        assert done.returncode == 0, done.stderr
        assert "on rank 2" in done.stdout
    assert len(keys_of(flux_instance, result.final_store, computes)) == 4
    assert result.finished
    assert not flux_instance.module_loaded(2)


def test_five_computes_at_once_make_five_entries(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--fresh")
    flux_instance.wait_datastore(ds)
    cc = flux_instance.flux(
        "submit", "--cc=1-5", "-N1", "-n1", "flux", "python", "-m", "conduit", "compute", "0"
    )
    computes = cc.stdout.split()
    result = flux_instance.datastore_output(ds)
    assert len(computes) == 5
    assert len(keys_of(flux_instance, result.final_store, computes)) == 5
    # each store printed is the previous one plus exactly one packet
    sizes = [len(s) for s in result.stores]
    assert sizes == list(range(1, 7))


BAD_PUTS = [
    ({"nodata": 1}, 'lacks "data"'),
    ({"data": 42}, "must be a string"),
    ({"data": {"a": 1}}, "must be a string"),
    ({"data": "{not json"}, "not valid JSON"),
    ({"data": "[1, 2]"}, "not an array"),
    ({"data": "7"}, "not a number"),
    ({"data": json.dumps({"big": "x" * 70000})}, "over the limit of 65536 bytes"),
    ({"data": "{}", "producer": "p"}, "go together"),
]


def test_bad_puts_get_clear_errors_and_the_next_put_succeeds(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--packets", "1", "--fresh", rank=1)
    flux_instance.wait_datastore(ds)
    results = flux_instance.put_all(1, [p for p, _ in BAD_PUTS] + [{"data": '{"good": 1}'}])
    for (payload, message), result in zip(BAD_PUTS, results):
        assert "error" in result, f"{payload} was accepted"
        assert message in str(result["error"]), result
    assert results[-1]["ok"] == {"id": 1, "duplicate": False}
    stored = flux_instance.datastore_output(ds)
    assert stored.final_store == {"test": 101, "good": 1}
    assert stored.finished


def test_put_without_a_datastore_is_refused(flux_instance: NativeInstance) -> None:
    flux_instance.flux("exec", "-r", "1", "flux", "module", "load", str(MODULE))
    try:
        [result] = flux_instance.put_all(1, [{"data": "{}"}])
    finally:
        flux_instance.flux("exec", "-r", "1", "flux", "module", "remove", "conduit")
    assert "no datastore is attached on rank 1" in str(result["error"])


def test_compute_without_datastore_fails_fast_with_one_line(flux_instance: NativeInstance) -> None:
    flux_instance.flux("kvs", "unlink", "-f", "conduit.datastore")
    start = time.monotonic()
    done = flux_instance.flux(
        "run",
        "-N1",
        "flux",
        "python",
        "-m",
        "conduit",
        "compute",
        "0",
        "--timeout",
        "3",
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert time.monotonic() - start < 30
    # the compute's own stderr is one line; flux run adds its "flux-job:" note
    [line] = [ln for ln in done.stderr.splitlines() if not ln.startswith("flux-job:")]
    assert line.startswith("conduit compute: no datastore acknowledged within 3s")
    assert "conduit.datastore" in line


def test_cancelled_datastore_is_resumed_by_the_next(flux_instance: NativeInstance) -> None:
    first = flux_instance.submit("datastore", "--packets", "5", "--fresh", rank=2)
    flux_instance.wait_datastore(first)
    early = [flux_instance.submit("compute", "0", rank=r) for r in (0, 1)]
    for jobid in early:
        assert flux_instance.wait_output(jobid).returncode == 0
    flux_instance.flux("cancel", first)
    cancelled = flux_instance.wait_output(first)
    assert cancelled.returncode != 0
    assert "packets stay in KVS conduit.log" in cancelled.stdout
    assert not flux_instance.module_loaded(2)

    second = flux_instance.submit("datastore", "--packets", "5", rank=2)
    flux_instance.wait_datastore(second)
    late = [flux_instance.submit("compute", "0", rank=r) for r in (0, 1, 2)]
    result = flux_instance.datastore_output(second)
    assert any(line.startswith("Resumed 2 packets") for line in result.lines)
    assert len(keys_of(flux_instance, result.final_store, early + late)) == 5
    assert result.finished


def test_datastore_killed_leaves_no_module_in_the_way(flux_instance: NativeInstance) -> None:
    first = flux_instance.submit("datastore", "--packets", "1", "--fresh", rank=0)
    flux_instance.wait_datastore(first)
    flux_instance.flux("job", "kill", "--signal=SIGKILL", first)
    flux_instance.wait_output(first)
    second = flux_instance.submit("datastore", "--packets", "1", rank=0)
    flux_instance.wait_datastore(second)
    compute = flux_instance.submit("compute", "0", rank=1)
    result = flux_instance.datastore_output(second)
    assert flux_instance.wait_output(compute).returncode == 0
    assert result.finished


STALLED_DATASTORE = """
import errno, json, sys, flux, flux.constants
h = flux.Flux()
h.rpc("module.load", {"path": sys.argv[1], "args": ["backlog=3"], "exec": False}).get()
attach = h.rpc("conduit.attach", {"jobid": 0}, flags=flux.constants.FLUX_RPC_STREAMING)
attach.get()  # the test packet; this "datastore" never acknowledges anything
puts = [h.rpc("conduit.put", {"data": json.dumps({"p": i})}) for i in range(4)]
out = {}
try:
    puts[3].wait_for(5).get()
    out["fourth"] = "accepted"
except OSError as exc:  # TimeoutError too, if it were held
    out["fourth"] = [exc.errno, exc.strerror]
out["held_pending"] = []
for f in puts[:3]:
    try:
        f.wait_for(0.5)
        out["held_pending"].append(False)
    except TimeoutError:
        out["held_pending"].append(True)
out["ping"] = "route" in h.rpc("broker.ping", {}).get()
out["held"] = h.rpc("conduit.stats-get").get()["held"]
h.rpc("module.remove", {"name": "conduit", "cancel": False}).get()
out["after_unload"] = []
for f in puts[:3]:
    try:
        f.get()
    except OSError as exc:
        out["after_unload"].append(exc.errno)
print(json.dumps(out))
"""


def test_stalled_datastore_fills_the_backlog_without_blocking(
    flux_instance: NativeInstance,
) -> None:
    result = json.loads(flux_instance.python(STALLED_DATASTORE, str(MODULE)).stdout)
    assert result["fourth"][0] == errno.EAGAIN  # at once
    assert "backlog" in result["fourth"][1]
    assert result["held_pending"] == [True, True, True]
    assert result["ping"] and result["held"] == 3
    assert result["after_unload"] == [errno.ECONNRESET] * 3


def test_a_second_datastore_is_refused_and_the_first_keeps_its_store(
    flux_instance: NativeInstance,
) -> None:
    first = flux_instance.submit("datastore", "--packets", "1", "--fresh", rank=0)
    flux_instance.wait_datastore(first)
    second = flux_instance.submit("datastore", "--packets", "1", "--fresh", rank=1)
    refused = flux_instance.wait_output(second)
    assert refused.returncode == 1
    assert "already serves the conduit on rank 0; cancel it first" in refused.stderr
    [put] = flux_instance.put_all(0, [{"data": '{"kept": 1}'}])
    assert put["ok"] == {"id": 1, "duplicate": False}
    assert flux_instance.datastore_output(first).final_store == {"test": 101, "kept": 1}


def test_two_instances_on_one_host_do_not_collide(flux_instance: NativeInstance) -> None:
    other = NativeInstance.start(size=3, own=True)
    try:
        demos = [
            subprocess.Popen(
                ["flux", "python", "-m", "conduit", "demo", "--computes", "5", "--sleep", "0"],
                env=inst.env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for inst in (flux_instance, other)
        ]
        outputs = [demo.communicate(timeout=180) for demo in demos]
    finally:
        other.stop()
    for demo, (out, err) in zip(demos, outputs):
        assert demo.returncode == 0, err
        assert out.splitlines()[-1] == "demo: 5 of 5 compute packets in the final store"
    # each instance's store holds its own computes' packets only
    stores = [output.parse(out).final_store for out, _ in outputs]
    assert not (set(stores[0]) & set(stores[1])) - {"test"}


def test_a_demo_whose_computes_cannot_start_says_why(flux_instance: NativeInstance) -> None:
    """Every compute rank drained: the timeout line names the waiting jobs and the drain."""
    flux_instance.flux("resource", "drain", "1-2", "maintenance")
    try:
        done = flux_instance.conduit(
            "demo", "--compute-ranks", "1,2", "--timeout", "5", check=False, timeout=120
        )
    finally:
        flux_instance.flux("resource", "undrain", "1-2")
    assert done.returncode == 1
    [line] = [line for line in done.stderr.splitlines() if line.startswith("conduit demo:")]
    assert line.startswith("conduit demo: no result within 5s; cancelled its 6 jobs"), line
    waiting = re.findall(r"((?:ƒ\w+ )+)\(rank (\d) drained: maintenance\)", line)
    assert [(len(ids.split()), rank) for ids, rank in waiting] == [(3, "1"), (2, "2")], line
