"""The C encoder made once writes exactly what json.dumps writes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from conduit.jsontext import c_encoder

VALUES: list[Any] = [
    {},
    {"a": 1, "b": [1, 2.5, None, True, False], "c": {"d": "e"}},
    {"unicode": "é ✓ \U0001f600", "escapes": 'quote " backslash \\ newline \n tab \t'},
    {"big": 2**70, "float": 0.1, "tiny": 5e-324, "neg": -0.0},
    {"nested": [[[{"x": [[]]}]]]},
]


@pytest.mark.parametrize("value", VALUES)
def test_compact_text_is_json_dumps_text(value: Any) -> None:
    encode = c_encoder()
    assert encode is not None  # CPython has the C encoder
    assert "".join(encode(value, 0)) == json.dumps(value, separators=(",", ":"), allow_nan=False)


@pytest.mark.parametrize("value", VALUES)
def test_default_separators_give_json_dumps_defaults(value: Any) -> None:
    encode = c_encoder(", ", ": ", allow_nan=True)
    assert encode is not None
    assert "".join(encode(value, 0)) == json.dumps(value)


def test_nan_is_refused_unless_allowed() -> None:
    strict, lenient = c_encoder(), c_encoder(", ", ": ", allow_nan=True)
    assert strict is not None and lenient is not None
    with pytest.raises(ValueError, match="Out of range float"):
        strict({"x": math.nan}, 0)
    assert "".join(lenient({"x": math.nan}, 0)) == '{"x": NaN}'


def test_what_json_cannot_encode_raises_type_error() -> None:
    encode = c_encoder()
    assert encode is not None
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode({"x": object()}, 0)
