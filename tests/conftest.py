from __future__ import annotations

from collections.abc import Iterator

import pytest

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
    try:
        yield instance
    finally:
        instance.stop()
