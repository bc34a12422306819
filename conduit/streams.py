"""`conduit status` and `conduit delete`: the streams of an instance.

Status reads each stream's KVS directory (where its datastore runs, its
finished mark) and the counters of the module serving it
(`<name>.stats-get`, what `flux module stats <name>` prints).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import flux
import flux.job

from conduit import kvsdir
from conduit.errors import ConduitError, connect
from conduit.protocol import check_stream, service

COLUMNS = ("STREAM", "STATE", "RANK", "HOST", "JOBID", "STORED", "HELD", "QUEUED", "REFUSED")


def stream_status(h: flux.Flux, stream: str) -> dict[str, Any]:
    """One stream: {"stream", "module", "state", "datastore"?, "stats"?, "finished"?}.

    state: running (a datastore is attached), stopped (a log, no
    datastore: the next resumes it), or finished.
    """
    d = kvsdir.ConduitDir(h, stream)
    status: dict[str, Any] = {"stream": stream, "module": service(stream), "state": "stopped"}
    location = d.location()
    if location is not None:
        status["datastore"] = {**location, "id": flux.job.JobID(location["jobid"]).f58}
        try:
            stats = h.rpc(f"{service(stream)}.stats-get", nodeid=location["rank"]).get()
        except OSError:
            stats = None  # published by a datastore that is gone
        if stats is not None and stats.get("attached"):
            status["state"] = "running"
            status["stats"] = stats
    finished = d.finished()
    if finished is not None and status["state"] != "running":
        status["state"] = "finished"
        status["finished"] = {**finished, "id": flux.job.JobID(finished["jobid"]).f58}
    return status


def row(s: dict[str, Any]) -> list[str]:
    where = s.get("datastore") or s.get("finished") or {}
    stats = s.get("stats")
    if stats:
        # the module counts what it stored itself; a resumed stream had some stored already
        stored = str(stats["stored"] + s["datastore"].get("resumed", 0))
        held, queued, refused = (str(stats[k]) for k in ("held", "queued", "rejected"))
    else:
        stored = str(s["finished"]["stored"]) if "finished" in s else "-"
        held = queued = refused = "-"
    running = s["state"] == "running"
    return [
        s["stream"],
        s["state"],
        str(where.get("rank", "-")) if running else "-",
        str(where.get("host", "-")) if running else "-",
        where.get("id", "-"),
        stored,
        held,
        queued,
        refused,
    ]


def status(args: argparse.Namespace) -> int:
    """Print each stream's datastore and counters: a table, or JSON with --json."""
    h = connect()
    streams = [stream_status(h, name) for name in kvsdir.list_streams(h)]
    if args.json:
        print(json.dumps({"streams": streams}))
        return 0
    if not streams:
        print("no streams: no datastore has run in this instance (or all were deleted)")
        return 0
    rows = [list(COLUMNS), *(row(s) for s in streams)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


def delete(args: argparse.Namespace) -> int:
    """Remove a stream that no datastore serves: its log, finished mark, check-ins."""
    h = connect()
    stream = check_stream(args.stream)
    s = stream_status(h, stream)
    if s["state"] == "running":
        raise ConduitError(
            f"stream {stream} is served by datastore job {s['datastore']['id']} on rank "
            f"{s['datastore']['rank']}; cancel it first"
        )
    kvsdir.ConduitDir(h, stream).delete()
    print(f"deleted stream {stream}")
    return 0
