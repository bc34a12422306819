"""The compute job: one packet through the conduit, acknowledged, then sleep.

The datastore's rank comes from the KVS (conduit.datastore), so a compute
on any rank reaches a datastore on any rank.  A put is retried, with the
same (producer, seq), while the failure is one that a running datastore
would clear (none yet, one restarting, a full backlog); the datastore
drops the duplicates that retries can make.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

import flux
import flux.job
import flux.kvs

from conduit import kvsdir
from conduit.protocol import KVS_COMPUTES, KVS_LOCATION, KVS_NAMESPACE, PUT, RETRYABLE_ERRNOS


class ConduitError(Exception):
    pass


def job_name() -> str:
    """This job's id (f58, ASCII), or pid@host outside a job."""
    if "FLUX_JOB_ID" in os.environ:
        return flux.job.JobID(os.environ["FLUX_JOB_ID"]).f58plain
    return f"pid{os.getpid()}@{socket.gethostname()}"


def put(
    h: flux.Flux,
    data: dict[str, Any],
    producer: str,
    seq: int,
    timeout: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Put one packet; return (datastore location, put response).

    Raises ConduitError when the packet is refused, or when no datastore
    acknowledged it within `timeout` seconds.
    """
    payload = {"data": json.dumps(data), "producer": producer, "seq": seq}
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        location = kvsdir.location(h)
        if location is None:
            problem = (
                f"no datastore has published its location (KVS key {KVS_LOCATION}); "
                "submit one first: flux submit -N1 -n1 flux python -m conduit datastore"
            )
        else:
            where = (
                f"datastore job {flux.job.JobID(location['jobid']).f58} on rank {location['rank']}"
            )
            remaining = max(deadline - time.monotonic(), 0.01)
            try:
                future = h.rpc(PUT, payload, nodeid=location["rank"])
                return location, future.wait_for(min(remaining, 10.0)).get()
            except OSError as exc:
                if exc.errno not in RETRYABLE_ERRNOS:
                    raise ConduitError(f"{where} refused the packet: {exc.strerror}") from exc
                problem = f"{where}: {exc.strerror or os.strerror(exc.errno or 0)}"
        if time.monotonic() >= deadline:
            raise ConduitError(f"no datastore acknowledged within {timeout:g}s: {problem}")
        time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
        delay = min(delay * 2, 1.0)


def main(seconds: float, timeout: float) -> int:
    h = flux.Flux()
    name = job_name()
    key = f"{int(time.time())}-{name}"
    # Check in under the conduit's KVS directory, as the original compute did.
    with flux.kvs.KVSTxn(h, namespace=KVS_NAMESPACE) as txn:
        txn.put(
            f"{KVS_COMPUTES}.{name}",
            {"rank": h.get_rank(), "host": socket.gethostname(), "key": key},
        )
    try:
        location, response = put(h, {key: "os.time"}, f"compute-{name}", 1, timeout)
    except ConduitError as exc:
        print(f"conduit compute: {exc}", file=sys.stderr, flush=True)
        return 1
    print(
        f"stored {key} in datastore job {flux.job.JobID(location['jobid']).f58} "
        f"on rank {location['rank']} (packet {response['id']})",
        flush=True,
    )
    time.sleep(seconds)
    return 0
