from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.compose_cluster import (  # noqa: F401  (fixtures and hook of the compose tests)
    compose_cluster,
    pytest_runtest_makereport,
    sized_cluster,
)
from tests.instance import FluxInstance, missing_flux


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--keep-cluster",
        action="store_true",
        help="leave the compose cluster running after the tests (see `make down`)",
    )


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
