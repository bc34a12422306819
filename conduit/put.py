"""`python3 -m conduit put`: JSON objects from the command line or JSON Lines, into the store.

Every object is read and checked before anything is sent, so a bad line
sends nothing.  Then each goes with Conduit.send (batched, and pipelined
deeper than put_many: faster for long inputs).  The exit status is 0
only when every packet is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from typing import Any

from conduit.client import Conduit, encode
from conduit.errors import ConduitError


def read_objects(texts: Iterable[str], source: str, first: int = 1) -> list[dict[str, Any]]:
    """Parse and check each non-blank text as one JSON object.

    `source` and the text's number, counted from `first`, name it in errors.
    """
    objects = []
    for number, text in enumerate(texts, start=first):
        if not text.strip():
            continue
        where = f"{source} {number}"
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ConduitError(f"{where} is not JSON ({exc}); nothing was sent") from None
        except RecursionError:
            raise ConduitError(f"{where} is nested too deeply; nothing was sent") from None
        try:
            encode(value, where)
        except ConduitError as exc:
            raise ConduitError(f"{exc}; nothing was sent", exc.errno) from None
        objects.append(value)
    return objects


def inputs(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.objects and args.file:
        raise ConduitError("give JSON objects as arguments or --file, not both")
    if args.objects:  # `-` among them: standard input's lines, there
        objects = []
        for number, text in enumerate(args.objects, start=1):
            if text == "-":
                objects += read_objects(sys.stdin, "stdin line")
            else:
                objects += read_objects([text], "argument", first=number)
        return objects
    if args.file == "-":
        return read_objects(sys.stdin, "stdin line")
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                return read_objects(f, f"{args.file} line")
        except OSError as exc:
            raise ConduitError(f"cannot read {args.file}: {exc.strerror}") from None
    raise ConduitError(
        "nothing to put: give JSON objects as arguments, or --file FILE (- for stdin)"
    )


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def main(args: argparse.Namespace) -> int:
    objects = inputs(args)
    if not objects:
        raise ConduitError("no JSON object in the input; nothing was sent")
    conduit = Conduit(
        producer=args.producer, timeout=args.timeout, batch=args.batch, stream=args.stream
    )
    start = time.monotonic()
    deadline = start + args.timeout  # for every packet, however long the sends wait
    sent = [conduit.send(obj, max(deadline - time.monotonic(), 0)) for obj in objects]
    conduit.close()  # raises how many failed, and why
    receipts = [s.result() for s in sent]
    duplicates = sum(r.duplicate for r in receipts)
    print(
        f"conduit put: {plural(len(receipts), 'packet')} stored "
        f"({plural(duplicates, 'duplicate')}) in "
        f"{conduit.location} in {time.monotonic() - start:.2f}s",
        file=sys.stderr,
    )
    return 0
