"""The compute job: one packet through the conduit, acknowledged, then sleep.

It checks in under the conduit's KVS directory, as the original compute
did, then puts {"<time>-<jobid>": "os.time"} with the client API, which
finds the datastore on any rank and retries while a datastore would
clear the failure (none yet, one restarting, a full backlog).
"""

from __future__ import annotations

import argparse
import socket
import time

from conduit import kvsdir
from conduit.client import Conduit, job_name


def main(args: argparse.Namespace) -> int:
    name = job_name()
    conduit = Conduit(producer=f"compute-{name}", timeout=args.timeout, stream=args.stream)
    key = f"{int(time.time())}-{name}"
    kvsdir.ConduitDir(conduit.h, args.stream).check_in(
        name, {"rank": conduit.h.get_rank(), "host": socket.gethostname(), "key": key}
    )
    receipt = conduit.put({key: "os.time"})
    print(f"stored {key} in {conduit.location} (packet {receipt.id})", flush=True)
    time.sleep(args.seconds)
    return 0
