"""Conduit.send and flush: the loop that does not wait each time (real Flux)."""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest

from conduit import output
from conduit.testbed.native import NativeInstance
from conduit.testbed.waiting import wait_until
from tests.checks import datastore, stop, while_stopped

pytestmark = pytest.mark.flux

# One task's stream: `count` sends of {"<producer>/<i>": i}, paced like a
# simulation's steps, then flush; one JSON line with each future's outcome.
STREAM_JOB = """
import json, sys, time
from conduit.client import Conduit, ConduitError
count = int(sys.argv[1])
conduit = Conduit(timeout=120)
futures = []
for i in range(count):
    futures.append(conduit.send({f"{conduit.producer}/{i}": i}))
    if i % 10 == 9:
        time.sleep(0.004)
try:
    conduit.flush()
    error = None
except ConduitError as exc:
    error = str(exc)
outcomes = [
    [f.result().id, f.result().duplicate] if f.exception() is None else str(f.exception())
    for f in futures
]
print(json.dumps({"producer": conduit.producer, "done": sum(f.done() for f in futures),
                  "outcomes": outcomes, "flush_error": error, "stats": vars(conduit.send_stats)}))
"""


def stream_reports(inst: NativeInstance, job: str) -> list[dict[str, Any]]:
    done = inst.wait_output(job, timeout=240)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_sends_across_a_killed_datastore_restarted_elsewhere(
    flux_instance: NativeInstance,
) -> None:
    first = datastore(flux_instance, "--packets", "0", "--print", "none", rank=1)
    jobs = [  # three producers, 20,000 packets
        flux_instance.flux(
            "submit", "-N1", f"-n{tasks}", f"--requires=rank:{rank}",
            "flux", "python", "-c", STREAM_JOB, str(count),
        ).stdout.strip()
        for tasks, rank, count in ((2, 0, 7000), (1, 2, 6000))
    ]  # fmt: skip
    wait_until(lambda: flux_instance.stats(1)["stored"] >= 4000, 60, "4000 packets stored")
    flux_instance.flux("job", "kill", "--signal=SIGKILL", first)
    assert flux_instance.wait_output(first).returncode != 0

    second = datastore(flux_instance, "--packets", "0", "--print", "none", rank=2, fresh=False)
    reports = [report for job in jobs for report in stream_reports(flux_instance, job)]
    store = flux_instance.durable_store()
    result = stop(flux_instance, second)
    assert any(line.startswith(output.RESUMED_PREFIX) for line in result.lines)
    assert sorted(len(r["outcomes"]) for r in reports) == [6000, 7000, 7000]
    assert sum(r["stats"]["retries"] for r in reports) > 0  # the kill hit requests in flight
    keys = list(store["store"])
    for report in reports:
        assert report["done"] == len(report["outcomes"])  # every future ended
        assert report["flush_error"] is None
        assert all(isinstance(outcome, list) for outcome in report["outcomes"])  # stored
        assert report["stats"]["pending"] == 0
        assert report["stats"]["peak_pending"] <= 4096
        # the duplicates counted from the answers' text, as their receipts say
        assert report["stats"]["duplicates"] == sum(o[1] for o in report["outcomes"])
        # each producer's packets in the store, in the order sent
        producer = report["producer"]
        mine = [k for k in keys if k.startswith(f"{producer}/")]
        assert mine == [f"{producer}/{i}" for i in range(len(report["outcomes"]))]
    # every packet exactly once: as many stored packets as distinct keys
    assert store["packets"] == len(store["store"]) == 20000


# Sends 10 good objects, one the module refuses, 10 more, in a `with` block.
MALFORMED_JOB = """
import json
from conduit.client import Conduit, ConduitError
objects = [{f"good-{i}": i} for i in range(10)] + [{"bad": "\\ud800"}]
objects += [{f"good-{i}": i} for i in range(10, 20)]
error = None
try:
    with Conduit(timeout=30) as conduit:
        futures = [conduit.send(obj) for obj in objects]
except ConduitError as exc:
    error = [exc.errno, str(exc)]
outcomes = [str(f.exception()) if f.exception() else f.result().id for f in futures]
print(json.dumps({"error": error, "outcomes": outcomes}))
"""


def test_a_malformed_packet_fails_alone_and_flush_says_so(flux_instance: NativeInstance) -> None:
    ds = datastore(flux_instance, "--packets", "0")
    report = json.loads(flux_instance.python(MALFORMED_JOB, timeout=120).stdout)
    store = flux_instance.durable_store()
    stop(flux_instance, ds)
    outcomes = report["outcomes"]
    refused = outcomes[10]
    assert "refused packet seq 11: conduit.put: " in refused
    assert '"data" is not valid JSON' in refused and "invalid Unicode" in refused
    assert all(isinstance(o, int) for o in outcomes[:10] + outcomes[11:])
    assert store["store"] == {f"good-{i}": i for i in range(20)}
    code, message = report["error"]
    assert code == errno.EPROTO
    assert message.startswith("1 of 21 packets sent since the last flush failed: ")
    assert refused in message


# With a stopped datastore: max_pending sends return at once, the next one
# waits its timeout and fails, flush fails them all; the counters say how
# many were pending.
BOUNDED_JOB = """
import json, time
from conduit.client import Conduit, ConduitError
conduit = Conduit(timeout=3, max_pending=50)
start = time.monotonic()
futures = [conduit.send({f"held-{i}": i}) for i in range(50)]
accepted = time.monotonic() - start
at_bound = vars(conduit.send_stats)
try:
    conduit.send({"one-too-many": 1}, timeout=1)
    blocked = None
except ConduitError as exc:
    blocked = [exc.errno, str(exc), time.monotonic() - start]
try:
    conduit.flush()
    flushed = None
except ConduitError as exc:
    flushed = [exc.errno, str(exc), time.monotonic() - start]
print(json.dumps({"accepted": accepted, "at_bound": at_bound, "blocked": blocked,
                  "flushed": flushed, "after": vars(conduit.send_stats),
                  "futures": [f.exception().errno for f in futures]}))
"""


def test_back_pressure_at_the_bound_with_a_stopped_datastore(flux_instance: NativeInstance) -> None:
    report = while_stopped(flux_instance, BOUNDED_JOB)
    assert report["accepted"] < 1  # below the bound, a send does not wait for the datastore
    assert report["at_bound"]["pending"] == report["at_bound"]["peak_pending"] == 50
    code, message, seconds = report["blocked"]
    assert code == errno.ETIMEDOUT
    assert message.startswith("50 packets are pending (max_pending), and none was stored")
    assert "this one was not sent" in message
    assert seconds < 3  # its own timeout (1 s), not the packets' (3 s)
    code, message, seconds = report["flushed"]
    assert code == errno.ETIMEDOUT
    assert message.startswith("50 of 50 packets sent since the last flush failed: ")
    assert "no datastore acknowledged packet seq 1 within 3s" in message
    assert seconds < 4  # each packet's timeout, not a request's (10 s) or the test's
    after = report["after"]
    assert (after["sent"], after["pending"], after["failed"], after["stored"]) == (50, 0, 50, 0)
    assert after["peak_pending"] == 50  # never above the bound
    assert report["futures"] == [errno.ETIMEDOUT] * 50


GONE_JOB = """
import json, time
from conduit.client import Conduit, ConduitError
conduit = Conduit(timeout=2)
start = time.monotonic()
futures = [conduit.send({f"k{i}": i}) for i in range(5)]
try:
    conduit.close()
except ConduitError as exc:
    print(json.dumps({"seconds": time.monotonic() - start, "error": str(exc)}))
"""


# A script that sends and ends, never flushing: the exit flushes it.
UNFLUSHED_JOB = """
import sys
from conduit.client import Conduit
conduit = Conduit(timeout=int(sys.argv[1]))
for i in range(500):
    conduit.send({f"unflushed-{i}": i})
"""


def test_sends_without_a_datastore_fail_within_their_timeout(
    flux_instance: NativeInstance,
) -> None:
    flux_instance.flux("kvs", "unlink", "-f", "conduit.datastore")
    report = json.loads(flux_instance.python(GONE_JOB, timeout=60).stdout)
    assert 2 <= report["seconds"] < 5
    assert report["error"].startswith("5 of 5 packets sent since the last flush failed: ")
    assert "within 2s: no datastore has published its location" in report["error"]
    # never flushed: the failures are one line on stderr at exit, not silence
    done = flux_instance.python(UNFLUSHED_JOB, "2", timeout=60)
    [line] = done.stderr.splitlines()
    assert line.startswith("conduit: at exit: 500 of 500 packets sent since the last flush failed")


def test_a_script_that_never_flushes_gets_its_packets_out_at_exit(
    flux_instance: NativeInstance,
) -> None:
    ds = datastore(flux_instance, "--packets", "0")
    done = flux_instance.python(UNFLUSHED_JOB, "30", timeout=60)
    store = flux_instance.durable_store()
    stop(flux_instance, ds)
    assert (done.returncode, done.stderr) == (0, "")
    assert store["store"] == {f"unflushed-{i}": i for i in range(500)}


# A KeyboardInterrupt in the send that fills the second batch, raised where
# that batch leaves (a fault injected into the sender's handle): the packets
# it held fail, the rest are stored, and closing ends instead of waiting for
# packets that nothing holds any more.
INTERRUPTED_JOB = """
import json, time
from conduit import sender
from conduit.client import Conduit, ConduitError
conduit = Conduit(timeout=30)
real, calls = sender.Handle.request, []
def request(handle, payload, rank):
    calls.append(rank)
    if len(calls) == 2:
        raise KeyboardInterrupt
    return real(handle, payload, rank)
sender.Handle.request = request
futures, interrupted_at = [], None
for i in range(200):
    try:
        futures.append(conduit.send({f"k{i}": i}))
    except KeyboardInterrupt:
        interrupted_at = i
start = time.monotonic()
try:
    conduit.close()
    error = None
except ConduitError as exc:
    error = [exc.errno, str(exc)]
print(json.dumps({"interrupted_at": interrupted_at, "seconds": time.monotonic() - start,
                  "error": error, "stats": vars(conduit.send_stats),
                  "failed": [i for i, f in enumerate(futures) if f.exception()]}))
"""


def test_an_interrupted_send_fails_what_it_held_and_close_ends(
    flux_instance: NativeInstance,
) -> None:
    ds = datastore(flux_instance, "--packets", "0")
    report = json.loads(flux_instance.python(INTERRUPTED_JOB, timeout=60).stdout)
    store = flux_instance.durable_store()
    stop(flux_instance, ds)
    assert report["interrupted_at"] == 127  # the send that filled the second batch of 64
    assert report["seconds"] < 5  # not each packet's timeout (30 s), nor forever
    code, message = report["error"]
    assert code == errno.ECANCELED
    assert message.startswith("64 of 200 packets sent since the last flush failed: not sent: ")
    assert report["failed"] == list(range(64, 127))  # the 128th raised: no future of it
    stats = report["stats"]
    assert (stats["sent"], stats["stored"], stats["failed"], stats["pending"]) == (200, 136, 64, 0)
    kept = [i for i in range(200) if not 64 <= i < 128]
    assert store["store"] == {f"k{i}": i for i in kept}


# When the sender next has something to do while a drain (after a retryable
# failure) waits for requests still in flight: not at the end of the resend's
# back-off, or the thread and a flushing caller would spin until they answer.
DUE_JOB = """
import json, time
from conduit.client import Conduit
from conduit.sender import Request
conduit = Conduit(timeout=30)
sender = conduit._sender
now = time.monotonic()
with sender._lock:
    sender._draining, sender._next_try = True, now - 1.0
    sender._requests[999999] = Request([], conduit.location, now)
    in_flight = sender._due(now) - now
    sender._requests.clear()
    over = sender._due(now) - now
    sender._draining = False
print(json.dumps({"in_flight": in_flight, "over": over}))
"""


def test_a_drain_waits_for_answers_not_for_its_back_off(flux_instance: NativeInstance) -> None:
    report = json.loads(flux_instance.python(DUE_JOB, timeout=60).stdout)
    assert report["in_flight"] > 1  # nothing due but deadlines (30 s) until an answer
    assert report["over"] <= 0  # the drain is over: resend now


# A job that runs its own reactor on its own handle: a timer sends a packet
# and pings the broker each tick, and keeps the reactor running until every
# future is done, without a flush; a guard timer gives up after 60 s.
REACTOR_JOB = """
import json
import flux
from conduit.client import Conduit
h = flux.Flux()
conduit = Conduit(h, timeout=60)
futures, pings = [], []

def tick(h, watcher, revents, args):
    if len(futures) < 200:
        futures.append(conduit.send({f"tick-{len(futures)}": len(futures)}))
        h.rpc("broker.ping", {"i": len(futures)}).then(lambda f: pings.append(f.get()["i"]))
    elif all(f.done() for f in futures):
        watcher.stop()
        guard.stop()

def give_up(h, watcher, revents, args):
    h.reactor_stop()

guard = h.timer_watcher_create(60, give_up)
guard.start()
timer = h.timer_watcher_create(0.001, tick, repeat=0.002)
timer.start()
h.reactor_run()
done_in_reactor = sum(f.done() for f in futures)
conduit.flush()
print(json.dumps({"done_in_reactor": done_in_reactor, "pings": len(pings),
                  "ids": [f.result().id for f in futures]}))
"""


def test_a_job_running_its_own_reactor_gets_its_packets_out(
    flux_instance: NativeInstance,
) -> None:
    ds = datastore(flux_instance, "--packets", "0")
    job = flux_instance.flux("submit", "-N1", "-n1", "flux", "python", "-c", REACTOR_JOB)
    done = flux_instance.wait_output(job.stdout.strip(), timeout=120)
    store = flux_instance.durable_store()
    stop(flux_instance, ds)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["done_in_reactor"] == 200  # stored while her reactor ran, before any flush
    assert report["pings"] == 200  # and her own RPCs were answered alongside
    assert report["ids"] == sorted(report["ids"])
    assert store["store"] == {f"tick-{i}": i for i in range(200)}
