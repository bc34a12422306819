"""Your own data through the conduit: the client API, `conduit put`, --save, --print (real Flux)."""

from __future__ import annotations

import errno
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from conduit import output
from conduit.testbed.native import NativeInstance
from conduit.testbed.waiting import wait_until
from tests.checks import REPO, datastore, stop, while_stopped

pytestmark = pytest.mark.flux

# Puts one object, then many pipelined one per request, then many batched;
# prints every receipt as JSON.
CLIENT_SCRIPT = """
import json, sys
from conduit.client import Conduit
count = int(sys.argv[1])
conduit = Conduit(timeout=60)
one = conduit.put({"one": 1})
singles = conduit.put_many(({f"single-{i}": i} for i in range(count)), batch=1)
batched = conduit.put_many(({f"batched-{i}": [i]} for i in range(count)), batch=64)
print(json.dumps({
    "producer": conduit.producer,
    "receipts": [[r.id, r.duplicate] for r in [one, *singles, *batched]],
}))
"""


def test_put_one_then_many_pipelined_and_batched(flux_instance: NativeInstance) -> None:
    ds = datastore(flux_instance, "--packets", "0")
    done = flux_instance.python(CLIENT_SCRIPT, "300", timeout=120)
    report = json.loads(done.stdout)
    store = flux_instance.durable_store()
    stop(flux_instance, ds)
    ids = [pid for pid, _ in report["receipts"]]
    assert len(ids) == 601 and len(set(ids)) == 601
    assert not any(dup for _, dup in report["receipts"])
    want = {"one": 1, **{f"single-{i}": i for i in range(300)}}
    want.update({f"batched-{i}": [i] for i in range(300)})
    assert store["store"] == want
    assert store["packets"] == 601


# A job that puts `count` packets in batches of 16 and retries through a
# datastore restart; prints its receipts.
RETRYING_JOB = """
import json, sys
from conduit.client import Conduit
count = int(sys.argv[1])
objects = ({f"k{i}": i} for i in range(count))
receipts = Conduit(timeout=120).put_many(objects, batch=16, in_flight=4)
print(json.dumps([[r.id, r.duplicate] for r in receipts]))
"""


def test_retried_puts_across_a_killed_datastore_restarted_elsewhere(
    flux_instance: NativeInstance,
) -> None:
    first = datastore(flux_instance, "--packets", "0", "--print", "none", rank=1)
    job = flux_instance.flux(
        "submit", "-N1", "-n1", "--requires=rank:0", "flux", "python", "-c", RETRYING_JOB, "20000"
    ).stdout.strip()
    wait_until(lambda: flux_instance.stats(1)["stored"] >= 2000, 60, "2000 packets stored")
    flux_instance.flux("job", "kill", "--signal=SIGKILL", first)
    assert flux_instance.wait_output(first).returncode != 0

    second = datastore(flux_instance, "--packets", "0", "--print", "none", rank=2, fresh=False)
    done = flux_instance.wait_output(job, timeout=180)
    assert done.returncode == 0, done.stderr
    receipts = json.loads(done.stdout)
    store = flux_instance.durable_store()
    result = stop(flux_instance, second)
    # every put acknowledged; each packet in the store exactly once
    assert len(receipts) == 20000
    assert store["store"] == {f"k{i}": i for i in range(20000)}
    assert store["packets"] == 20000
    assert any(line.startswith(output.RESUMED_PREFIX) for line in result.lines)


def test_put_command_arguments_file_and_stdin(
    flux_instance: NativeInstance, tmp_path: Path
) -> None:
    ds = datastore(flux_instance, "--packets", "0")
    args = flux_instance.conduit("put", '{"energy": 1.5}', '{"step": 2}')
    lines = tmp_path / "results.jsonl"
    lines.write_text('{"a": 1}\n\n{"b": [1, 2]}\n{"c": {"d": null}}\n')
    from_file = flux_instance.conduit("put", "--file", str(lines))
    from_stdin = flux_instance.conduit("put", "-f", "-", input='{"e": "x"}\n{"f": true}\n')
    store = flux_instance.durable_store()["store"]
    stop(flux_instance, ds)
    assert store == {
        "energy": 1.5, "step": 2, "a": 1, "b": [1, 2], "c": {"d": None}, "e": "x", "f": True,
    }  # fmt: skip
    for done, n in ((args, 2), (from_file, 3), (from_stdin, 2)):
        assert done.stdout == ""
        [summary] = done.stderr.splitlines()
        assert re.fullmatch(
            rf"conduit put: {n} packets stored \(0 duplicates\) in datastore job \S+ on rank 1 "
            r"in [0-9.]+s",
            summary,
        ), summary


def test_put_dash_argument_reads_standard_input(flux_instance: NativeInstance) -> None:
    """`-` as an argument is standard input as JSON Lines, in its place (issue 14)."""
    ds = datastore(flux_instance, "--packets", "0")
    only = flux_instance.conduit("put", "-", input='{"a": 1}\n\n{"b": 2}\n')
    mixed = flux_instance.conduit("put", '{"c": 3}', "-", '{"e": 5}', input='{"d": 4}\n')
    bad = flux_instance.conduit("put", "-", input='{"ok": 1}\n{"broken": \n', check=False)
    store = flux_instance.durable_store()
    stop(flux_instance, ds)
    assert list(store["store"].items()) == [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]
    assert store["packets"] == 5
    assert [only.returncode, mixed.returncode, bad.returncode] == [0, 0, 1]
    assert "2 packets stored" in only.stderr and "3 packets stored" in mixed.stderr
    [line] = bad.stderr.splitlines()
    assert line.startswith("conduit put: stdin line 2 is not JSON"), line


@pytest.mark.parametrize(
    "argv, stdin, message",
    [
        (["--file", "-"], '{"ok": 1}\n[1, 2]\n', "stdin line 2 is not a JSON object (a dict)"),
        (["--file", "-"], '{"ok": 1}\n{"broken": \n', "stdin line 2 is not JSON"),
        (["{}", "{nope"], None, "argument 2 is not JSON"),
        (["--file", "/nonexistent.jsonl"], None, "cannot read /nonexistent.jsonl"),
        ([], None, "nothing to put"),
    ],
)
def test_put_command_bad_input_sends_nothing(
    flux_instance: NativeInstance, argv: list[str], stdin: str | None, message: str
) -> None:
    ds = datastore(flux_instance, "--packets", "0")
    done = flux_instance.conduit("put", *argv, input=stdin, check=False)
    store = flux_instance.durable_store()
    stop(flux_instance, ds)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"conduit put: {message}"), line
    assert store["packets"] == 0


def test_put_command_without_a_datastore_ends_in_time(flux_instance: NativeInstance) -> None:
    flux_instance.flux("kvs", "unlink", "-f", "conduit.datastore")
    start = time.monotonic()
    done = flux_instance.conduit("put", "--timeout", "2", '{"a": 1}', check=False, timeout=60)
    assert done.returncode == 1
    assert time.monotonic() - start < 30  # bounded: the timeout, not the test's limit
    [line] = done.stderr.splitlines()
    assert line.startswith("conduit put: 1 of 1 packets sent since the last flush failed: ")
    assert "no datastore acknowledged packet seq 1 within 2s: no datastore" in line


def saved(path: Path) -> Any:
    return json.loads(path.read_text())


def test_save_after_a_normal_finish_and_after_a_cancel(
    flux_instance: NativeInstance, tmp_path: Path
) -> None:
    finished = tmp_path / "finished.json"
    ds = datastore(flux_instance, "--packets", "3", "--save", str(finished))
    flux_instance.conduit("put", '{"a": 1}', '{"b": 2}', '{"c": 3}')
    result = flux_instance.datastore_output(ds)
    assert saved(finished) == {"a": 1, "b": 2, "c": 3}
    assert saved(finished) == {k: v for k, v in result.final_store.items() if k != "test"}

    cancelled = tmp_path / "cancelled.json"
    ds = datastore(flux_instance, "--packets", "0", "--save", str(cancelled))
    flux_instance.conduit("put", '{"x": [1]}', '{"y": {"z": 2}}')
    durable = flux_instance.durable_store()["store"]
    stop(flux_instance, ds)
    assert saved(cancelled) == durable == {"x": [1], "y": {"z": 2}}
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_output_stays_linear_past_the_store_line_limit(flux_instance: NativeInstance) -> None:
    packets = 4000
    ds = datastore(flux_instance, "--packets", str(packets))
    producer = flux_instance.submit("produce", "--count", str(packets), "--in-flight", "256")
    assert flux_instance.wait_output(producer, timeout=180).returncode == 0
    done = flux_instance.wait_output(ds, timeout=180)
    result = output.parse(done.stdout)
    assert result.finished
    [notice] = [line for line in result.lines if line.startswith(output.PACKETS_PREFIX)]
    assert str(output.STORE_LINE_LIMIT) in notice
    # whole stores while small, then one line per packet: bytes per packet stay bounded
    assert len(result.stores) + len(result.packets) == packets + 1  # and the test packet
    assert len(done.stdout) / packets < 400
    assert len(result.final_store) == packets + 1


def test_print_none_and_packets(flux_instance: NativeInstance) -> None:
    for mode in ("none", "packets"):
        ds = datastore(flux_instance, "--packets", "2", "--print", mode)
        flux_instance.conduit("put", '{"a": 1}', '{"b": 2}')
        result = flux_instance.datastore_output(ds)
        assert result.finished
        if mode == "none":
            assert (result.stores, result.packets) == ([], [])
            assert result.summary == {"stored": 2, "keys": 2, "commits": result.summary["commits"]}
        else:
            assert result.packets == [{"test": 101}, {"a": 1}, {"b": 2}]


def readme_example() -> str:
    """The example job of the README's "Send your own data" section."""
    text = (REPO / "README.md").read_text()
    [code] = re.findall(r"```python\n(# simulate\.py.*?)```", text, flags=re.DOTALL)
    return code


def test_readme_example_job_runs_as_written(flux_instance: NativeInstance, tmp_path: Path) -> None:
    script = tmp_path / "simulate.py"
    script.write_text(readme_example())
    ds = datastore(flux_instance, "--packets", "0")
    job = flux_instance.flux("submit", "-N1", "-n2", "flux", "python", str(script)).stdout.strip()
    done = flux_instance.wait_output(job, timeout=120)
    store = flux_instance.durable_store()
    stop(flux_instance, ds)
    assert done.returncode == 0, done.stderr
    assert store["packets"] == 2 * 100 + 2 * 1  # two tasks: 100 steps, then a summary each


# Puts with a 3 s timeout; prints how long it took and what it raised.
BOUNDED_PUT = """
import json, time
from conduit.client import Conduit, ConduitError
conduit = Conduit(timeout=3)
start = time.monotonic()
try:
    conduit.put_many([{"a": 1}, {"b": 2}], batch=1)
    outcome = "stored"
except ConduitError as exc:
    outcome = [exc.errno, str(exc)]
print(json.dumps({"seconds": time.monotonic() - start, "outcome": outcome}))
"""


def test_a_put_never_waits_past_its_timeout(flux_instance: NativeInstance) -> None:
    """A datastore that stops answering (SIGSTOP) holds the puts; the client gives up in time."""
    report = while_stopped(flux_instance, BOUNDED_PUT)
    code, message = report["outcome"]
    assert code == errno.ETIMEDOUT
    assert message.startswith("no datastore acknowledged 2 of 2 packets within 3s: ")
    assert 3 <= report["seconds"] < 4  # the timeout, not a request's or the overlay's
