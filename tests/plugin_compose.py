"""pytest plugin: the compose testbed as fixtures, with their option.

`compose_cluster` (session scope) is the 3-node testbed of compose.yaml;
`sized_cluster` is a testbed of N nodes for one test (indirect parameter
N).  Both skip, with the reason, where Docker, Compose v2 or the base
image is missing.  When a test that uses a cluster fails, the `docker
compose logs` of its nodes go into the test report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest

from conduit import testbed
from tests.compose_cluster import COMPOSE, ComposeCluster, missing_compose, running_cluster


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--keep-cluster",
        action="store_true",
        help="leave the compose clusters running after the tests (see `make down`)",
    )


def cluster_of(request: pytest.FixtureRequest, nodes: int) -> Iterator[ComposeCluster]:
    reason = missing_compose()
    if reason:
        pytest.skip(f"needs Docker: {reason}")
    keep = bool(request.config.getoption("--keep-cluster"))
    with running_cluster(nodes, keep) as cluster:
        yield cluster
    if keep:
        say(
            request.config,
            f"kept cluster {cluster.project}; remove it with: {' '.join(COMPOSE)} "
            f"-p {cluster.project} -f {cluster.file} down --volumes --remove-orphans",
        )


@pytest.fixture(scope="session")
def compose_cluster(request: pytest.FixtureRequest) -> Iterator[ComposeCluster]:
    """The 3-node testbed of compose.yaml, shared by the session."""
    yield from cluster_of(request, testbed.DEFAULT_NODES)


@pytest.fixture
def sized_cluster(request: pytest.FixtureRequest) -> Iterator[ComposeCluster]:
    """A testbed of request.param nodes, for one test."""
    yield from cluster_of(request, int(request.param))


def say(config: pytest.Config, line: str) -> None:
    """A line on the terminal, past pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write("\n")
        reporter.write_line(line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, ComposeCluster):
            report.sections.append((f"docker compose logs ({value.project})", value.logs()))
