"""Consumers: `conduit follow STREAM` on a real Flux instance.

Each test names its own stream, so that it does not meet the other tests'.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conduit.lines import LineReader
from conduit.protocol import SEGMENT_BYTES, SEGMENT_COMMITS, SEGMENTS_PER_DIR, segment_path
from conduit.testbed.native import NativeInstance
from conduit.testbed.waiting import wait_until
from tests.checks import REPO, module_stats, start_datastore

pytestmark = pytest.mark.flux

# Puts `count` packets {"k<i>": i} to a stream in batches of 16, retrying
# through a datastore restart; prints its receipts.
RETRYING_JOB = """
import json, sys
from conduit.client import Conduit
count, stream = int(sys.argv[1]), sys.argv[2]
objects = ({f"k{i}": i} for i in range(count))
receipts = Conduit(timeout=120, stream=stream).put_many(objects, batch=16, in_flight=4)
print(json.dumps([[r.id, r.duplicate] for r in receipts]))
"""


def follow(inst: NativeInstance, stream: str, *args: str, rank: int | None = None) -> list[str]:
    """The command line of `conduit follow`, on `rank` if given."""
    where = ["flux", "exec", "-r", str(rank)] if rank is not None else []
    return inst.command(*where, "flux", "python", "-m", "conduit", "follow", stream, *args)


def packets(lines: list[str]) -> list[dict[str, Any]]:
    """The packets of a consumer's complete lines (a killed one may leave half a line)."""
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            assert line is lines[-1], f"a broken line that is not the last: {line!r}"
    return out


def test_a_consumer_across_a_datastore_kill_and_its_own_restart(
    flux_instance: NativeInstance,
) -> None:
    inst = flux_instance
    first = start_datastore(inst, "fol", "--packets", "0", "--fresh", "--quiet", rank=1)
    consumer = LineReader(follow(inst, "fol", "--wait", "60", rank=2), env=inst.env, cwd=REPO)
    job = inst.flux("submit", "-N1", "-n1", "--requires=rank:0", "flux", "python", "-c",
                    RETRYING_JOB, "20000", "fol").stdout.strip()  # fmt: skip
    wait_until(lambda: module_stats(inst, "conduit-fol", 1)["stored"] >= 2000, 60, "2000 stored")
    inst.flux("job", "kill", "--signal=SIGKILL", first)
    assert inst.wait_output(first).returncode != 0
    # 20,000 of the client and one more, put when it is done, end the stream
    second = inst.submit("datastore", "--stream", "fol", "--packets", "20001", "--quiet", rank=2)
    deadline = time.monotonic() + 120
    while len(consumer.lines) < 6000:
        consumer.next(deadline)
    consumer.close()  # SIGKILL
    seen = packets(consumer.lines)
    done = inst.wait_output(job, timeout=180)
    assert done.returncode == 0, done.stderr
    receipts = json.loads(done.stdout)
    inst.conduit("put", "--stream", "fol", '{"end": true}')
    assert inst.wait_output(second).returncode == 0
    rest = subprocess.run(
        follow(inst, "fol", "--after", str(seen[-1]["id"]), "--wait", "10", rank=0),
        env=inst.env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rest.returncode == 0, rest.stderr
    later = packets(rest.stdout.splitlines())

    assert len(receipts) == 20000
    every = seen + later
    ids = [p["id"] for p in every]
    assert ids == sorted(set(ids)), "out of order, or twice"
    merged: dict[str, Any] = {}
    for p in every:
        assert not merged.keys() & p["data"].keys(), f"{p} seen twice"
        merged.update(p["data"])
    assert merged == {**{f"k{i}": i for i in range(20000)}, "end": True}
    assert len(seen) >= 6000 and len(every) == 20001


def test_a_consumer_waits_for_a_stream_then_reads_a_finished_one(
    flux_instance: NativeInstance,
) -> None:
    inst = flux_instance
    start = time.monotonic()
    missing = inst.conduit("follow", "never", "--wait", "2", check=False)
    assert missing.returncode == 1 and time.monotonic() - start < 30
    [line] = missing.stderr.splitlines()
    assert line.startswith("conduit follow: stream never does not exist: no datastore served it")

    early = LineReader(follow(inst, "late", "--wait", "60", rank=1), env=inst.env, cwd=REPO)
    ds = start_datastore(inst, "late", "--packets", "3", "--fresh", rank=2)
    inst.conduit("put", "--stream", "late", '{"a": 1}', '{"b": 2}', '{"c": 3}')
    assert early.finish(60) == 0, early.stderr()
    assert inst.wait_output(ds).returncode == 0
    want = [{"id": 1, "data": {"a": 1}}, {"id": 2, "data": {"b": 2}}, {"id": 3, "data": {"c": 3}}]
    assert packets(early.lines) == want

    # finished: read whole, from any point, and the command ends
    assert packets(inst.conduit("follow", "late").stdout.splitlines()) == want
    assert packets(inst.conduit("follow", "late", "--after", "2").stdout.splitlines()) == want[2:]

    # --follow-on: the stream's next run replaces it, and its ids go on
    on = LineReader(follow(inst, "late", "--after", "3", "--follow-on", "--count", "1"),
                      env=inst.env, cwd=REPO)  # fmt: skip
    again = start_datastore(inst, "late", "--packets", "1", rank=2)
    inst.conduit("put", "--stream", "late", '{"d": 4}')
    assert on.finish(60) == 0, on.stderr()
    assert inst.wait_output(again).returncode == 0
    assert packets(on.lines) == [{"id": 4, "data": {"d": 4}}]


def test_a_consumer_of_a_stream_deleted_under_it_ends_with_one_line(
    flux_instance: NativeInstance,
) -> None:
    inst = flux_instance
    ds = start_datastore(inst, "gone", "--packets", "0", "--fresh", "--quiet", rank=1)
    # here, not through `flux exec`, which holds a pipe's output until it has 4 KiB or ends
    consumer = LineReader(follow(inst, "gone", "--wait", "60"), env=inst.env, cwd=REPO)
    inst.conduit("put", "--stream", "gone", '{"a": 1}')
    assert packets([consumer.next(time.monotonic() + 60)]) == [{"id": 1, "data": {"a": 1}}]
    inst.flux("job", "kill", "--signal=SIGKILL", ds)  # no finished mark: the consumer waits on
    assert inst.wait_output(ds).returncode != 0
    wait_until(lambda: "stopped" in inst.conduit("status").stdout, 60, "the datastore gone")
    inst.conduit("delete", "gone")
    assert consumer.finish(60) == 1
    assert consumer.stderr().splitlines() == [
        "conduit follow: stream gone: its log was deleted or replaced while it was read"
    ]


def test_a_consumer_whose_instance_ends_says_so(flux_instance: NativeInstance) -> None:
    """On an instance of its own, ended under it (flux_instance: for its skip without Flux)."""
    inst = NativeInstance.start(size=2, own=True)
    try:
        ds = start_datastore(inst, "x", "--packets", "0", "--quiet", rank=1)
        consumer = LineReader(follow(inst, "x", "--wait", "60"), env=inst.env, cwd=REPO)
        inst.conduit("put", "--stream", "x", '{"a": 1}')
        assert packets([consumer.next(time.monotonic() + 60)]) == [{"id": 1, "data": {"a": 1}}]
        inst.flux("job", "kill", "--signal=SIGKILL", ds)  # no finished mark: it would wait on
    finally:
        inst.stop()
    assert consumer.finish(60) == 1
    assert consumer.stderr().splitlines() == [
        "conduit follow: stream x: lost the connection to the Flux instance (did it end?)"
    ]


def counters(inst: NativeInstance, stream: str, *args: str) -> dict[str, Any]:
    """Follow `stream` to its end, its lines thrown away; the consumer's --stats."""
    done = subprocess.run(
        follow(inst, stream, "--stats", "--wait", "60", *args),
        env=inst.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stderr.splitlines()[-1]))


def test_a_consumer_of_200000_packets_holds_one_segment_at_most(
    flux_instance: NativeInstance,
) -> None:
    inst = flux_instance
    total = 200_000
    ds = start_datastore(inst, "mem", "--packets", str(total), "--fresh", "--quiet", rank=1)
    put = inst.submit("produce", "--stream", "mem", "--count", str(total), "--batch", "256",
                      "--in-flight", "8", rank=2)  # fmt: skip
    small = counters(inst, "mem", "--count", "1000")
    big = counters(inst, "mem")
    assert inst.wait_output(put, timeout=300).returncode == 0
    assert inst.wait_output(ds, timeout=300).returncode == 0
    log_bytes = sum(len(inst.flux("kvs", "get", "--raw", f"conduit.streams.mem.log.{where}").stdout)
                    for where in map(segment_path, range(big["segments"])))  # fmt: skip

    # last_id: the last packet handed out, where a consumer restarted goes on
    assert (small["packets"], small["last_id"]) == (1000, 1000)
    assert (big["packets"], big["last_id"]) == (total, total)
    assert big["segments"] > 2
    # the documented bound: one segment (SEGMENT_BYTES, passed by at most one commit)
    assert big["peak_buffer_bytes"] <= 2 * SEGMENT_BYTES < log_bytes / 2
    # and the process: its peak RSS grows by far less than the log it read
    assert big["maxrss_kb"] - small["maxrss_kb"] < 32 * 1024


def test_a_log_past_one_directory_of_segments_is_resumed_and_followed(
    flux_instance: NativeInstance,
) -> None:
    inst = flux_instance
    puts = (SEGMENTS_PER_DIR + 1) * SEGMENT_COMMITS  # one a commit: into the second directory
    ds = start_datastore(inst, "deep", "--packets", "0", "--fresh", "--quiet", rank=1)
    put = inst.submit("produce", "--stream", "deep", "--count", str(puts), "--batch", "1",
                      "--in-flight", "1", rank=2)  # fmt: skip
    assert inst.wait_output(put, timeout=300).returncode == 0
    inst.flux("job", "kill", "--signal=SIGKILL", ds)
    assert inst.wait_output(ds).returncode != 0
    again = start_datastore(inst, "deep", "--packets", str(puts + 1), "--quiet", rank=2)
    inst.conduit("put", "--stream", "deep", '{"end": true}')
    assert inst.wait_output(again).returncode == 0

    log = json.loads(inst.conduit("store", "--stream", "deep").stdout)
    assert log["packets"] == puts + 1 and log["segments"] > SEGMENTS_PER_DIR
    # a commit rewrites its segment's directory: none holds more than SEGMENTS_PER_DIR
    top = inst.flux("kvs", "ls", "-1", "conduit.streams.deep.log").stdout.split()
    sizes = [len(inst.flux("kvs", "ls", "-1", f"conduit.streams.deep.log.{d}").stdout.split())
             for d in top]  # fmt: skip
    assert len(top) == 2 and sum(sizes) == log["segments"] and max(sizes) == SEGMENTS_PER_DIR
    read = counters(inst, "deep")
    assert (read["packets"], read["last_id"]) == (puts + 1, puts + 1)
    assert read["segments"] == log["segments"]


def test_readme_analysis_job_follows_and_resumes(
    flux_instance: NativeInstance, tmp_path: Path
) -> None:
    """The example job of the README's "Follow a stream" section, as written."""
    inst = flux_instance
    text = (REPO / "README.md").read_text()
    [code] = re.findall(r"```python\n(# analyze\.py.*?)```", text, flags=re.DOTALL)
    (tmp_path / "analyze.py").write_text(code)
    ds = start_datastore(inst, "ana", "--packets", "3", "--fresh", "--quiet", rank=1)

    def analyze() -> str:
        return inst.flux("submit", "-N1", "-n1", f"--cwd={tmp_path}", "flux", "python",
                         "analyze.py", "ana").stdout.strip()  # fmt: skip

    first = analyze()
    inst.conduit("put", "--stream", "ana", '{"loss": 0.9}', '{"loss": 0.5}', '{"loss": 0.7}')
    done = inst.wait_output(first)
    assert inst.wait_output(ds).returncode == 0
    again = inst.wait_output(analyze())
    assert done.returncode == 0 and again.returncode == 0, done.stderr + again.stderr
    assert done.stdout.splitlines() == [
        "packet 1: best loss so far 0.9",
        "packet 2: best loss so far 0.5",
        '{"stream": "ana", "resumed_after": 0, "best_loss": 0.5}',
    ]
    assert again.stdout.splitlines() == ['{"stream": "ana", "resumed_after": 3, "best_loss": null}']
