"""The data-conduit scenario: a datastore, N computes, the attach stream.

Submits the datastore, waits until it is ready, submits the computes
spread over the instance's ranks, streams `flux job attach` of the
datastore to stdout, and succeeds only if every compute's packet is in
the final store.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import flux
import flux.job

from conduit import output
from conduit.jobs import attach_lines, submit


def compute_ranks(size: int, count: int, ranks: Sequence[int] | None) -> list[int]:
    """Spread `count` computes round-robin over `ranks` (default: all ranks)."""
    pool = list(ranks) if ranks else list(range(size))
    return [pool[i % len(pool)] for i in range(count)]


def run(
    computes: int | None,
    datastore_rank: int | None,
    ranks: Sequence[int] | None,
    sleep: float,
    timeout: float,
) -> int:
    h = flux.Flux()
    size = int(h.attr_get("size"))
    if computes is None:
        computes = max(5, size)
    deadline = time.monotonic() + timeout
    datastore = submit(
        h, ["datastore", "--packets", str(computes), "--fresh"], "datastore", datastore_rank
    )
    print(f"# datastore job {datastore.f58}", file=sys.stderr, flush=True)
    submitted: list[flux.job.JobID] = []
    text: list[str] = []
    try:
        for line in attach_lines(datastore, deadline):
            print(line, flush=True)
            text.append(line)
            if line == output.RUNNING:
                for rank in compute_ranks(size, computes, ranks):
                    submitted.append(submit(h, ["compute", str(sleep)], "compute", rank))
                print(
                    f"# {computes} computes: {' '.join(j.f58 for j in submitted)}",
                    file=sys.stderr,
                    flush=True,
                )
    except TimeoutError:
        print(f"demo: no result within {timeout:g}s; cancelling", file=sys.stderr)
        for jobid in [datastore, *submitted]:
            flux.job.cancel(h, jobid, "conduit demo timed out")
        return 1
    return verify(h, output.parse("\n".join(text)), submitted, computes)


def why_failed(h: flux.Flux, jobid: flux.job.JobID) -> str | None:
    """None if the job exited 0, else how it ended and where."""
    flux.job.result(h, jobid)  # wait for it
    job = flux.job.get_job(h, jobid)
    if job.get("returncode") == 0:
        return None
    if job.get("exception_occurred"):
        how = f"{job['exception_type']} exception: {job.get('exception_note') or 'no note'}"
    else:
        how = f"exit code {job.get('returncode')}"
    return f"{jobid.f58} on {job.get('nodelist') or 'no node'} ({how})"


def verify(
    h: flux.Flux, result: output.DatastoreOutput, computes: list[flux.job.JobID], want: int
) -> int:
    keys = list(result.final_store)
    missing = [j for j in computes if not any(k.endswith(f"-{j.f58plain}") for k in keys)]
    failed = [why for why in (why_failed(h, j) for j in computes) if why]
    ok = len(computes) == want and result.finished and not missing and not failed
    stored = len(computes) - len(missing)
    summary = f"demo: {stored} of {want} compute packets in the final store"
    if not result.finished:
        summary += "; the datastore did not finish"
    if missing:
        summary += f"; missing: {' '.join(j.f58 for j in missing)}"
    if failed:
        summary += f"; failed computes: {', '.join(failed)}"
    print(summary, file=sys.stdout if ok else sys.stderr, flush=True)
    return 0 if ok else 1
