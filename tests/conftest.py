"""The suite's fixtures are the installed pytest plugin's (conduit.testbed.plugin).

`pip install -e '.[test]'` registers it (entry point pytest11); run from a
checkout without that, it is loaded from here instead.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from tests.checks import MODULE

registered = any(ep.value == "conduit.testbed.plugin" for ep in entry_points(group="pytest11"))
pytest_plugins = ["pytester", *([] if registered else ["conduit.testbed.plugin"])]


@pytest.fixture(scope="session")
def flux_instance(flux_instance):  # type: ignore[no-untyped-def]
    """The plugin's native instance, once this checkout's module is built (`make module`)."""
    if not MODULE.is_file():
        pytest.skip(f"{MODULE.relative_to(MODULE.parents[1])} is not built; run `make module`")
    return flux_instance
