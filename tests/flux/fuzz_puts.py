"""Send seeded random and malformed payloads straight to conduit.put.

Run with the Python Flux uses:  flux python tests/flux/fuzz_puts.py SEED COUNT RANK
Prints one JSON line: what was sent, what was refused, and any payload
whose outcome was wrong (a malformed one accepted, a valid one refused).
A valid packet's data is {"fuzz-<SEED>-<i>": <random JSON value>}, so the
caller can find each accepted one in the store.
"""

from __future__ import annotations

import json
import random
import string
import sys
from typing import Any

import flux

from conduit.protocol import MAX_DATA


def value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value that both Python and jansson read the same way."""
    kinds = ["int", "float", "str", "bool", "null"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-(2**53), 2**53)
    if kind == "float":
        return rng.uniform(-1e9, 1e9)
    if kind == "str":
        alphabet = string.printable + 'éü中文😀"\\/'
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {f"k{j}": value(rng, depth + 1) for j in range(rng.randint(0, 5))}


def malformed(rng: random.Random, i: int) -> tuple[Any, str]:
    """A payload the module must refuse, and why."""
    good = json.dumps({f"bad-{i}": 1})
    cases: list[tuple[Any, str]] = [
        ({}, "no data"),
        ({"nodata": good}, "no data"),
        ({"data": value(rng)}, "data not a string"),
        ({"data": [good]}, "data not a string"),
        ({"data": good[: rng.randint(0, len(good) - 1)]}, "truncated JSON"),
        ({"data": json.dumps(value(rng, 4) if rng.random() < 0.5 else [1])}, "not an object"),
        ({"data": "{" + "".join(rng.choice(string.printable) for _ in range(20))}, "garbage"),
        ({"data": '{"x": NaN}'}, "NaN literal"),
        ({"data": json.dumps({"big": "x" * (MAX_DATA + 1)})}, "over the size limit"),
        ({"data": good, "producer": "p"}, "producer without seq"),
        ({"data": good, "seq": 3}, "seq without producer"),
        ({"data": good, "producer": "p", "seq": -1}, "negative seq"),
        ({"data": good, "producer": 7, "seq": 1}, "producer not a string"),
        ("".join(rng.choice(string.printable) for _ in range(30)), "payload not JSON"),
        (json.dumps([good]), "payload not an object"),
    ]
    payload, why = rng.choice(cases)
    if why == "not an object" and isinstance(json.loads(payload["data"]), dict):
        payload = {"data": "[]"}
    return payload, why


def main() -> int:
    seed, count, rank = (int(a) for a in sys.argv[1:4])
    rng = random.Random(seed)
    h = flux.Flux()
    wrong, refused, accepted = [], 0, []
    for i in range(count):
        if rng.random() < 0.5:
            key = f"fuzz-{seed}-{i}"
            text = json.dumps({key: value(rng)}, ensure_ascii=rng.random() < 0.5)
            while len(text.encode()) > MAX_DATA:  # valid means within the limit too
                text = json.dumps({key: value(rng, 3)})
            payload: Any = {"data": text}
            if rng.random() < 0.5:
                payload.update(producer=f"fuzz-{seed}", seq=i + 1)
            valid, why = True, "valid"
        else:
            payload, why = malformed(rng, i)
            valid = False
        if isinstance(payload, str):
            payload = payload.encode()  # sent as it is, not JSON-encoded
        try:
            h.rpc("conduit.put", payload, nodeid=rank).get()
            ok = True
        except OSError as exc:
            ok, refused = False, refused + 1
            if valid:
                wrong.append({"i": i, "why": why, "error": exc.strerror})
        if ok and not valid:
            wrong.append({"i": i, "why": why, "error": "accepted"})
        if ok and valid:
            accepted.append(json.loads(payload["data"]))
    print(json.dumps({"sent": count, "refused": refused, "wrong": wrong, "accepted": accepted}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
