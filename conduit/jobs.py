"""Submitting conduit jobs and following their output."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import flux
import flux.job

from conduit import kvsdir


def submit(h: flux.Flux, argv: Sequence[str], name: str, rank: int | None = None) -> flux.job.JobID:
    """Submit `python3 -m conduit ARGV...` with this environment, on `rank`."""
    spec = flux.job.JobspecV1.from_command(
        [sys.executable, "-m", "conduit", *argv],
        num_tasks=1,
        num_nodes=1,
        environment=dict(os.environ),
        cwd=os.getcwd(),
        name=name,
        unbuffered=True,
    )
    if rank is not None:
        spec.setattr("system.constraints", {"ranks": [str(rank)]})
    return flux.job.JobID(flux.job.submit(h, spec))


def attach_lines(jobid: flux.job.JobID, deadline: float) -> Iterator[str]:
    """Lines of `flux job attach JOBID` (stdout), until it ends or time is up."""
    proc = subprocess.Popen(
        ["flux", "job", "attach", str(jobid)], stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise TimeoutError from None
            if line is None:
                proc.wait()
                return
            yield line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_location(h: flux.Flux, jobid: flux.job.JobID, deadline: float) -> dict[str, Any]:
    """Wait until datastore `jobid` has published its location in the KVS."""
    while time.monotonic() < deadline:
        location = kvsdir.location(h)
        if location is not None and location.get("jobid") == int(jobid):
            return location
        if flux.job.get_job(h, jobid)["state"] == "INACTIVE":
            raise RuntimeError(f"datastore job {jobid.f58} ended before it was ready")
        time.sleep(0.1)
    raise TimeoutError(f"datastore job {jobid.f58} was not ready in time")
