"""pytest plugin: the compose testbed as fixtures, with their option.

`compose_cluster` (session scope) is a testbed of the default size;
`sized_cluster` is a testbed of N nodes for one test (indirect parameter
N); `new_cluster` makes testbeds inside a test.  They run on the engine
of ENGINE (docker by default, or podman; tests/compose_cluster.py), and
skip, with the reason, where that engine, Compose v2 or the base image is
missing.  When a test that uses a cluster fails, the `docker compose logs`
of its nodes go into the test report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from conduit import testbed
from tests.compose_cluster import (
    COMPOSE,
    ComposeCluster,
    chosen_engine,
    missing_compose,
    running_cluster,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--keep-cluster",
        action="store_true",
        help="leave the compose clusters running after the tests (see `make down`)",
    )


def pytest_configure(config: pytest.Config) -> None:
    try:
        engine = chosen_engine()
    except testbed.TestbedError as exc:
        raise pytest.UsageError(str(exc)) from None
    if engine.name == "podman":
        # ENGINE=podman: what talks to "the" engine without a cluster at hand
        # (docker.from_env() in a test, the docker CLI) talks to Podman too.
        os.environ.update(engine.env())


NewCluster = Callable[..., AbstractContextManager[ComposeCluster]]


def cluster_maker(config: pytest.Config, engine: testbed.Engine | None = None) -> NewCluster:
    """`with make(nodes, size=0, site_files=()) as cluster:` a testbed of its own for the block.

    On `engine`, by default the one of ENGINE.
    """
    engine = engine or chosen_engine()
    reason = missing_compose(engine)
    if reason:
        pytest.skip(f"needs {engine.name.capitalize()}: {reason}")
    keep = bool(config.getoption("--keep-cluster"))

    @contextmanager
    def make(
        nodes: int, size: int = 0, site_files: Sequence[Path] = ()
    ) -> Iterator[ComposeCluster]:
        with running_cluster(nodes, keep, size, engine, site_files) as cluster:
            yield cluster
        if keep:
            env = "".join(f"{k}={v} " for k, v in engine.env().items() if k == "DOCKER_HOST")
            say(
                config,
                f"kept cluster {cluster.project}; remove it with: {env}{' '.join(COMPOSE)} "
                f"-p {cluster.project} -f {cluster.file} down --volumes --remove-orphans",
            )

    return make


@pytest.fixture(scope="session")
def compose_cluster(request: pytest.FixtureRequest) -> Iterator[ComposeCluster]:
    """The testbed of the default size (conduit.testbed.DEFAULT_NODES), shared by the session."""
    with cluster_maker(request.config)(testbed.DEFAULT_NODES) as cluster:
        yield cluster


@pytest.fixture
def sized_cluster(request: pytest.FixtureRequest) -> Iterator[ComposeCluster]:
    """A testbed of request.param nodes, for one test."""
    with cluster_maker(request.config)(int(request.param)) as cluster:
        yield cluster


@pytest.fixture
def new_cluster(request: pytest.FixtureRequest) -> NewCluster:
    """Testbeds of a test's own: `with new_cluster(3, size=6) as cluster:`."""
    return cluster_maker(request.config)


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
