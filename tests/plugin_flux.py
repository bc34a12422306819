"""pytest plugin: `flux_instance`, a Flux instance of three or more brokers.

The instance the tests run in (FLUX_URI set), or a `flux start
--test-size=3` of the session's own.  Skips, with the reason, where Flux
or the built module is missing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.instance import FluxInstance, missing_flux


@pytest.fixture(scope="session")
def flux_instance() -> Iterator[FluxInstance]:
    reason = missing_flux()
    if reason:
        pytest.skip(f"needs Flux: {reason}")
    instance = FluxInstance.start(size=3)
    if instance.size < 3:
        pytest.skip(f"needs 3 or more brokers; the instance at {instance.uri} has {instance.size}")
    try:
        yield instance
    finally:
        instance.stop()
