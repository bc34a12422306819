"""The host side's one exception type."""

from __future__ import annotations


class TestbedError(Exception):
    """A one-line message for the user: what is wrong and what to do."""

    __test__ = False  # not a pytest test class, whatever its name
