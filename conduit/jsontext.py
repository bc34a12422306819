"""JSON text without json.dumps's cost a call: Python's C encoder, made once.

json.dumps and JSONEncoder.encode make a C encoder at each call: a fifth
of a send's time, and 1.2 of the 2 µs a consumer's line took
(docs/performance.md).  Standard library only, like everything in jobs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))  # the fallback, made once
JSON_STRING = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]

Encoder = Callable[[Any, int], list[str]]


def c_encoder(
    item_separator: str = ",", key_separator: str = ":", allow_nan: bool = False
) -> Encoder | None:
    """enc, where "".join(enc(obj, 0)) is json.dumps(obj, separators=..., allow_nan=...).

    None where Python has no C json: use json.dumps there.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    # markers, default, string encoder, indent, separators, sort_keys, skipkeys, allow_nan
    encoder: Encoder = make(
        None, JSON.default, JSON_STRING, None, key_separator, item_separator, False, False,
        allow_nan,
    )  # fmt: skip
    return encoder
