"""Delivery guarantees under load and faults, on a real Flux instance.

Guarantees (README, "Delivery guarantees"): an acknowledged put is in the
store exactly once; it survives a datastore crash because it is in the
KVS before the acknowledgement; a put that cannot be stored gets an error.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from conduit.testbed.native import NativeInstance
from conduit.testbed.waiting import wait_until

pytestmark = pytest.mark.flux


def producer_reports(inst: NativeInstance, jobs: list[str]) -> list[dict[str, Any]]:
    reports = []
    for jobid in jobs:
        done = inst.wait_output(jobid, timeout=300)
        assert done.returncode == 0, f"producer {jobid}: {done.stderr}"
        reports.append(json.loads(done.stdout.splitlines()[-1]))
    return reports


def expected_keys(reports: list[dict[str, Any]]) -> set[str]:
    return {f"{r['producer']}-{seq}" for r in reports for seq in range(1, r["count"] + 1)}


def test_ten_producers_lose_and_duplicate_nothing(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--packets", "0", "--fresh", "--quiet", rank=0)
    flux_instance.wait_datastore(ds)
    ranks = flux_instance.size
    jobs = [flux_instance.submit("produce", "--count", "1000", rank=i % ranks) for i in range(10)]
    reports = producer_reports(flux_instance, jobs)
    store = flux_instance.durable_store()
    flux_instance.flux("cancel", ds)
    flux_instance.wait_output(ds)
    assert all(r["acked"] == 1000 and r["errors"] == {} for r in reports)
    assert sum(r["duplicates"] for r in reports) == 0
    assert store["packets"] == 10_000
    assert set(store["store"]) == expected_keys(reports)


def test_datastore_killed_mid_stream_and_restarted(flux_instance: NativeInstance) -> None:
    first = flux_instance.submit("datastore", "--packets", "0", "--fresh", "--quiet", rank=1)
    flux_instance.wait_datastore(first)
    jobs = [
        flux_instance.submit(
            "produce", "--count", "3000", "--in-flight", "16", "--retry-for", "90", rank=r
        )
        for r in (0, 2, 0)
    ]
    wait_until(
        lambda: flux_instance.stats(1)["stored"] >= 1000, 60, "the first datastore storing 1000"
    )
    flux_instance.flux("job", "kill", "--signal=SIGKILL", first)
    assert flux_instance.wait_output(first).returncode != 0

    second = flux_instance.submit("datastore", "--packets", "9000", "--quiet", rank=2)
    reports = producer_reports(flux_instance, jobs)
    result = flux_instance.datastore_output(second)
    [resumed] = [line for line in result.lines if line.startswith("Resumed ")]
    assert int(resumed.split()[1]) >= 1000
    summary = result.summary
    assert summary is not None, result.lines
    # every put was acknowledged; the store has each packet once, none missing
    assert all(r["acked"] == 3000 for r in reports)
    assert sum(r["retries"] for r in reports) > 0
    assert summary["stored"] == 9000
    assert summary["keys"] == 9000  # the module's {"test": 101} is shown, never stored


def test_random_and_malformed_puts(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--packets", "0", "--fresh", "--quiet", rank=1)
    flux_instance.wait_datastore(ds)
    fuzz = ["tests/flux/fuzz_puts.py", "20261125", "1000", "1"]
    done = flux_instance.flux("python", *fuzz, timeout=300)
    report = json.loads(done.stdout)
    assert report["wrong"] == []
    assert 300 < report["refused"] < 700
    [after] = flux_instance.put_all(1, [{"data": '{"after-fuzz": true}'}])
    assert "ok" in after
    store = flux_instance.durable_store()
    assert flux_instance.flux("ping", "--count=1", "1").returncode == 0
    flux_instance.flux("cancel", ds)
    flux_instance.wait_output(ds)
    accepted = report["accepted"]
    assert store["packets"] == len(accepted) + 1
    for data in accepted:
        for key, value in data.items():
            assert store["store"][key] == value


def test_only_the_instance_owner_may_put(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--packets", "1", "--fresh", rank=0)
    flux_instance.wait_datastore(ds)
    guest = dict(flux_instance.env, FLUX_HANDLE_USERID="4242", FLUX_HANDLE_ROLEMASK="0x2")
    code = (
        "import flux\n"
        "try:\n"
        "    flux.Flux().rpc('conduit.put', {'data': '{\"guest\": 1}'}, nodeid=0).get()\n"
        "except OSError as exc:\n"
        "    print(exc.errno, exc.strerror)\n"
    )
    done = subprocess.run(
        ["flux", "python", "-c", code], env=guest, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "1 Request requires owner credentials"
    [owner] = flux_instance.put_all(0, [{"data": '{"owner": 1}'}])
    assert "ok" in owner
    assert flux_instance.datastore_output(ds).final_store == {"test": 101, "owner": 1}
