"""The one wait-until helper of the host side (the testbed and the test harness)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from conduit.testbed.errors import TestbedError

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    timeout: float,
    what: str,
    pause: float = 0.2,
    state: Callable[[], str] | None = None,
) -> T:
    """Call `check` until it returns something true; that value.

    Args:
        check: what to ask, as often as every `pause` seconds.
        timeout: seconds before giving up.
        what: the condition, for the message.
        state: describes the last state seen, for the message (default: the last value).

    Raises:
        TestbedError: `what` did not hold within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            last = state() if state else f"last: {value!r}"
            raise TestbedError(f"{what}: not within {timeout:g}s ({last})")
        time.sleep(pause)
