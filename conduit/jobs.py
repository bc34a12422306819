"""Submitting conduit jobs, following their output, and cleaning up after them."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import flux
import flux.job

from conduit import kvsdir
from conduit.errors import ConduitError
from conduit.lines import LineReader


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


def attach(jobid: flux.job.JobID) -> LineReader:
    """The output of job `jobid` as it comes (`flux job attach`)."""
    return LineReader(["flux", "job", "attach", str(jobid)])


def wait_location(h: flux.Flux, jobid: flux.job.JobID, deadline: float) -> dict[str, Any]:
    """Wait until datastore `jobid` has published its location in the KVS.

    Raises:
        ConduitError: the job ended first, or the deadline passed.
    """
    ended = flux.job.result_async(h, jobid)
    watch = kvsdir.ConduitDir(h).watch_location()
    try:
        while time.monotonic() < deadline:
            try:
                location = watch.wait_for(min(deadline - time.monotonic(), 0.5)).get()
            except TimeoutError:
                if ended.is_ready():
                    raise ConduitError(
                        f"datastore job {jobid.f58} ended before it was ready"
                    ) from None
                continue
            if isinstance(location, dict) and location.get("jobid") == int(jobid):
                return location
        raise ConduitError(f"datastore job {jobid.f58} was not ready in time", errno.ETIMEDOUT)
    finally:
        watch.cancel()


def cancel_all(h: flux.Flux, jobids: Iterable[flux.job.JobID], why: str) -> None:
    """Cancel these jobs; those that already ended are fine."""
    for jobid in jobids:
        with contextlib.suppress(OSError):
            flux.job.cancel(h, jobid, why)
