"""pytest plugin: a multi-node Flux testbed (and a native Flux instance) as fixtures.

Installed with `pip install 'flux-conduit[testbed]'`, it registers itself
(entry point `pytest11`); a test asks for a fixture:

    import pytest

    @pytest.mark.flux_testbed(nodes=4)
    def test_my_workflow(flux_testbed):
        jobid = flux_testbed.submit_command("hostname", options=("-N4",))
        assert flux_testbed.wait_job(jobid)["success"]

- `flux_testbed`: a compose testbed (conduit.testbed.cluster.ComposeTestbed)
  shared by the tests that ask for the same shape (nodes, size, image,
  engine) for the whole session; `@pytest.mark.flux_testbed(fresh=True)`
  gives a test one of its own, taken down after it (for tests that break it).
- `flux_testbed_factory`: `with flux_testbed_factory(nodes=3, size=6) as tb:`,
  testbeds of a test's own inside the test.
- `flux_instance`: a native instance (conduit.testbed.native): the one the
  tests run in when FLUX_URI is set, else a `flux start --test-size=N`.

The shape comes from the marker, else the command line, else the ini file:
`--flux-testbed-nodes` / `flux_testbed_nodes`, `--flux-testbed-image` /
`flux_testbed_image` (a published image; default: build this package's),
`--flux-testbed-engine` / `flux_testbed_engine` (docker or podman; default:
$ENGINE, else docker).  Where the engine, Compose v2, the base image or Flux
is missing, the test skips with the reason in one line; with
`--flux-testbed-required` (or FLUX_TESTBED_REQUIRED=1) it fails instead, so a
CI job cannot pass by skipping.  When a test that used a testbed fails, the
nodes' logs are in its report; `--flux-testbed-keep` leaves the testbeds
running and says how to reach them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from conduit.testbed.cluster import ComposeTestbed, missing_engine, running_testbed
from conduit.testbed.composefile import DEFAULT_NODES
from conduit.testbed.engine import Engine
from conduit.testbed.errors import TestbedError
from conduit.testbed.native import NativeInstance, missing_flux, running_instance

MARKER = "flux_testbed"
SHAPE_KEYS = ("nodes", "size", "image", "engine")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flux-testbed", "a multi-node Flux testbed (flux-conduit)")
    for name, help in (
        ("nodes", f"nodes of a testbed whose test does not say (default {DEFAULT_NODES})"),
        ("image", "a published testbed image to run (default: build flux-conduit's)"),
        ("engine", "docker or podman (default: $ENGINE, else docker)"),
    ):
        group.addoption(f"--flux-testbed-{name}", dest=f"flux_testbed_{name}", help=help)
        parser.addini(f"flux_testbed_{name}", help)
    group.addoption(
        "--flux-testbed-keep",
        action="store_true",
        help="leave the testbeds running after the session, and say how to reach them",
    )
    group.addoption(
        "--flux-testbed-required",
        action="store_true",
        default=bool(os.environ.get("FLUX_TESTBED_REQUIRED")),
        help="fail, not skip, where the testbed or Flux cannot run (FLUX_TESTBED_REQUIRED=1)",
    )
    group.addoption(
        "--flux-instance-size",
        type=int,
        default=3,
        help="brokers of the native instance flux_instance starts (default 3)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(nodes=N, size=N, image=REF, engine=docker|podman, fresh=False): "
        "the testbed this test needs; fresh=True: one of its own",
    )


@dataclass(frozen=True)
class Shape:
    """What makes two testbeds interchangeable."""

    nodes: int
    size: int
    image: str | None
    engine: Engine

    def __str__(self) -> str:
        image = f", {self.image}" if self.image else ""
        return f"{self.nodes} of {self.size} nodes on {self.engine.name}{image}"


def setting(config: pytest.Config, name: str) -> str | None:
    """--flux-testbed-NAME, else the ini's flux_testbed_NAME, else None."""
    value = config.getoption(f"flux_testbed_{name}") or config.getini(f"flux_testbed_{name}")
    return str(value) if value else None


def shape_of(config: pytest.Config, asked: dict[str, Any]) -> Shape:
    """The shape a test asks for (its marker's keywords), the options filling in the rest."""
    unknown = set(asked) - {*SHAPE_KEYS, "fresh"}
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.{MARKER}: unknown {', '.join(sorted(unknown))}")
    nodes = int(asked.get("nodes") or setting(config, "nodes") or DEFAULT_NODES)
    chosen = os.environ.get("ENGINE") or "docker"  # as `make test ENGINE=...` passes it on
    engine_name = asked.get("engine") or setting(config, "engine") or chosen
    # ENGINE_SOCKET is the socket of the engine ENGINE names, not of another
    socket = os.environ.get("ENGINE_SOCKET", "") if engine_name == chosen else ""
    try:
        engine = Engine.named(engine_name, socket)
    except TestbedError as exc:
        raise pytest.UsageError(str(exc)) from None
    image = asked.get("image") or setting(config, "image")
    return Shape(nodes, int(asked.get("size") or nodes), image, engine)


def unavailable(config: pytest.Config, reason: str) -> NoReturn:
    """Skip with the reason, or fail where the testbed is required."""
    if config.getoption("flux_testbed_required"):
        pytest.fail(f"required, but cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


class Testbeds:
    """The session's testbeds: one shared per shape, and fresh ones on request."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.keep = bool(config.getoption("flux_testbed_keep"))
        self.shared: dict[Shape, ComposeTestbed] = {}
        self.kept: list[ComposeTestbed] = []
        # (project, logs) of fresh testbeds that a failure took down, for the report
        self.failed: list[tuple[str, str]] = []
        self.stack = ExitStack()

    def check(self, shape: Shape) -> None:
        reason = missing_engine(shape.engine, shape.image)
        if reason:
            unavailable(self.config, f"needs {shape.engine.name.capitalize()}: {reason}")

    @contextmanager
    def fresh(self, shape: Shape, site_files: Sequence[Path] = ()) -> Iterator[ComposeTestbed]:
        """A testbed of this shape (and site config) for the block alone."""
        self.check(shape)
        with running_testbed(
            shape.nodes, shape.size, shape.engine, shape.image, self.keep, site_files
        ) as tb:
            if self.keep:
                self.kept.append(tb)
            try:
                yield tb
            except BaseException:
                self.failed.append((tb.project, tb.logs()))  # before it is taken down
                raise

    def shared_one(self, shape: Shape) -> ComposeTestbed:
        """The session's testbed of this shape, brought up the first time it is asked for."""
        if shape not in self.shared:
            self.shared[shape] = self.stack.enter_context(self.fresh(shape))
        return self.shared[shape]

    def close(self) -> None:
        self.stack.close()


@pytest.fixture(scope="session")
def flux_testbeds(pytestconfig: pytest.Config) -> Iterator[Testbeds]:
    """The session's testbeds (shared ones are taken down when the session ends)."""
    testbeds = Testbeds(pytestconfig)
    try:
        yield testbeds
    finally:
        testbeds.close()
        for tb in testbeds.kept:
            say(pytestconfig, f"kept testbed {tb.project}; {tb.how_to_reach()}")


@pytest.fixture
def flux_testbed(
    request: pytest.FixtureRequest, flux_testbeds: Testbeds
) -> Iterator[ComposeTestbed]:
    """A multi-node Flux instance of containers, as `@pytest.mark.flux_testbed(...)` asks.

    Shared with every test that asks for the same shape, unless the marker
    says fresh=True.  Skips (or, when required, fails) with the reason
    where Docker/Podman, Compose v2 or the image is missing.
    """
    marker = request.node.get_closest_marker(MARKER)
    asked = dict(marker.kwargs) if marker else {}
    shape = shape_of(request.config, asked)
    if asked.get("fresh"):
        with flux_testbeds.fresh(shape) as tb:
            yield tb
    else:
        yield flux_testbeds.shared_one(shape)


NewTestbed = Callable[..., AbstractContextManager[ComposeTestbed]]


@pytest.fixture
def flux_testbed_factory(request: pytest.FixtureRequest, flux_testbeds: Testbeds) -> NewTestbed:
    """Testbeds of a test's own: `with flux_testbed_factory(nodes=3, size=6) as tb:`.

    Keywords as for the marker (nodes, size, image, engine), and
    site_files: broker config files (*.toml) the testbed starts with.  Each
    is taken down at the end of its block.
    """

    def make(
        site_files: Sequence[Path] = (), **asked: Any
    ) -> AbstractContextManager[ComposeTestbed]:
        return flux_testbeds.fresh(shape_of(request.config, asked), site_files)

    return make


@pytest.fixture(scope="session")
def flux_instance(pytestconfig: pytest.Config) -> Iterator[NativeInstance]:
    """A native Flux instance: the enclosing one (FLUX_URI), else a `flux start --test-size=N`.

    Skips (or, when required, fails) with the reason where Flux is missing.
    """
    reason = missing_flux()
    if reason:
        unavailable(pytestconfig, f"needs Flux: {reason}")
    size = int(pytestconfig.getoption("flux_instance_size"))
    with running_instance(size) as instance:
        if instance.size < size:
            unavailable(
                pytestconfig,
                f"needs {size} or more brokers; the instance at {instance.uri} has {instance.size}",
            )
        yield instance


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
    """A failed test that used testbeds gets their nodes' logs in its report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, ComposeTestbed):
            report.sections.append((f"testbed logs ({value.project})", value.logs()))
        elif isinstance(value, Testbeds):
            while value.failed:
                project, logs = value.failed.pop(0)
                report.sections.append((f"testbed logs ({project})", logs))
