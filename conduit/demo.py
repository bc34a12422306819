"""The data-conduit scenario: a datastore, N computes, the attach stream.

Submits the datastore, waits until it is ready, submits the computes
spread over the instance's ranks, streams `flux job attach` of the
datastore to stdout, and succeeds only if every compute's packet is in
the final store.  Whatever happens, it leaves no job of its own running.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import flux
import flux.job
from flux.idset import IDset

from conduit import output
from conduit.errors import ConduitError, connect
from conduit.jobs import attach, cancel_all, submit


def compute_ranks(pool: Sequence[int], count: int) -> list[int]:
    """Spread `count` computes round-robin over the ranks of `pool`."""
    return [pool[i % len(pool)] for i in range(count)]


def usable_ranks(h: flux.Flux) -> list[int]:
    """The ranks that can run a compute: online, not drained, not excluded.

    A testbed made with room to grow has ranks that are not started;
    computes sent there would wait for ever.
    """
    status = h.rpc("resource.status", nodeid=0).get()
    unusable = set(IDset(status["exclude"] or "")) | {
        rank for ranks in status["drain"] for rank in IDset(ranks)
    }
    return [rank for rank in IDset(status["online"] or "") if rank not in unusable]


def note(line: str) -> None:
    print(f"# {line}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    h = connect()
    size = int(h.attr_get("size"))
    if args.compute_ranks and max(args.compute_ranks) >= size:
        raise ConduitError(f"--compute-ranks: the instance has ranks 0 to {size - 1}")
    if args.datastore_rank is not None and args.datastore_rank >= size:
        raise ConduitError(f"--datastore-rank: the instance has ranks 0 to {size - 1}")
    pool = args.compute_ranks or usable_ranks(h)
    computes = args.computes or max(5, len(pool))
    deadline = time.monotonic() + args.timeout
    argv = ["datastore", "--packets", str(computes), "--fresh"]
    datastore = submit(h, argv, "datastore", args.datastore_rank)
    jobs = [datastore]
    placed = {datastore: args.datastore_rank}  # job -> the rank it must run on, if any
    note(f"datastore job {datastore.f58}")
    try:
        with attach(datastore) as stream:
            for line in stream.follow(deadline):
                print(line, flush=True)
                if line == output.RUNNING:
                    for rank in compute_ranks(pool, computes):
                        job = submit(h, ["compute", str(args.sleep)], "compute", rank)
                        jobs.append(job)
                        placed[job] = rank
                    note(f"{computes} computes: {' '.join(j.f58 for j in jobs[1:])}")
        result = output.parse("\n".join(stream.lines))
        return verify(h, result, jobs[1:], computes, deadline)
    except TimeoutError:
        waiting = why_waiting(h, placed)
        cancel_all(h, jobs, "conduit demo timed out")
        hint = f"still waiting: {waiting}" if waiting else "raise --timeout on a busy instance"
        raise ConduitError(
            f"no result within {args.timeout:g}s; cancelled its {len(jobs)} jobs "
            f"(see `flux jobs -a`); {hint}"
        ) from None
    except BaseException:
        cancel_all(h, jobs, "conduit demo stopped")
        raise


PENDING = ("DEPEND", "PRIORITY", "SCHED")


def why_waiting(h: flux.Flux, placed: dict[flux.job.JobID, int | None]) -> str:
    """Which of these jobs never started, and why, as far as Flux knows; "" if all started.

    A job placed on a rank waits for ever when that rank is drained, down
    or excluded; one that is not placed waits for free resources.
    """
    status = h.rpc("resource.status", nodeid=0).get()
    online = set(IDset(status["online"] or ""))
    excluded = set(IDset(status["exclude"] or ""))
    drained = {
        rank: info.get("reason") or "no reason given"
        for ranks, info in status["drain"].items()
        for rank in IDset(ranks)
    }
    reasons: dict[str, list[str]] = {}
    for jobid, rank in placed.items():
        if flux.job.get_job(h, jobid).get("state") not in PENDING:
            continue
        if rank is None:
            why = "not enough free resources"
        elif rank in drained:
            why = f"rank {rank} drained: {drained[rank]}"
        elif rank not in online:
            why = f"rank {rank} down"
        elif rank in excluded:
            why = f"rank {rank} excluded"
        else:
            why = f"rank {rank} busy"
        reasons.setdefault(why, []).append(jobid.f58)
    return "; ".join(f"{' '.join(ids)} ({why})" for why, ids in reasons.items())


def why_failed(h: flux.Flux, jobid: flux.job.JobID, deadline: float) -> str | None:
    """None if the job exited 0, else how it ended and where (TimeoutError: still running)."""
    flux.job.result_async(h, jobid).wait_for(max(deadline - time.monotonic(), 0.001))
    job = flux.job.get_job(h, jobid)
    if job.get("returncode") == 0:
        return None
    if job.get("exception_occurred"):
        how = f"{job['exception_type']} exception: {job.get('exception_note') or 'no note'}"
    else:
        how = f"exit code {job.get('returncode')}"
    return f"{jobid.f58} on {job.get('nodelist') or 'no node'} ({how})"


def verify(
    h: flux.Flux,
    result: output.DatastoreOutput,
    computes: list[flux.job.JobID],
    want: int,
    deadline: float,
) -> int:
    keys = list(result.final_store)
    missing = [j for j in computes if not any(k.endswith(f"-{j.f58plain}") for k in keys)]
    failed = [why for why in (why_failed(h, j, deadline) for j in computes) if why]
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
