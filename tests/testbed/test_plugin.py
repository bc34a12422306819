"""The pytest plugin as another project uses it: a test suite of its own, run by pytest.

Each test here writes a small outside project with pytester (test files
and a conftest.py that names nothing: the installed plugin registers
itself) and runs pytest on it in a subprocess, as its CI would.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.checks import REPO

pytestmark = pytest.mark.compose

# Each test writes the project of the testbed it got, so the outer test can
# tell which tests shared one.
PROJECT_TESTS = """
import json, os, pytest

def record(name, tb):
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps({"test": name, "project": tb.project, "nodes": tb.nodes}) + "\\n")

@pytest.mark.flux_testbed(nodes=2)
def test_two_nodes_run_hostname(flux_testbed):
    record("a", flux_testbed)
    jobid = flux_testbed.submit_command("hostname", options=("-N2", "-n2"))
    job = flux_testbed.wait_job(jobid)
    assert job["result"] == "COMPLETED"
    assert sorted(flux_testbed.flux("job", "attach", jobid).stdout.split()) == ["node0", "node1"]

@pytest.mark.flux_testbed(nodes=2)
def test_the_same_shape_shares_the_testbed(flux_testbed):
    record("b", flux_testbed)
    assert flux_testbed.flux("getattr", "size").stdout.strip() == "2"

@pytest.mark.flux_testbed(nodes=2)
def test_a_failure_reports_the_nodes_logs(flux_testbed):
    record("fail", flux_testbed)
    assert flux_testbed.flux("getattr", "size").stdout.strip() == "3"

@pytest.mark.flux_testbed(nodes=1)
def test_another_shape_gets_another_testbed(flux_testbed):
    record("c", flux_testbed)
    assert flux_testbed.flux("getattr", "size").stdout.strip() == "1"
"""


def test_an_outside_project_gets_testbeds_shared_by_shape_and_logs_on_failure(
    pytester: pytest.Pytester, flux_testbed: object
) -> None:
    """(flux_testbed: only so that this skips, with the reason, where no testbed can run.)"""
    pytester.makepyfile(test_workflow=PROJECT_TESTS)
    record = pytester.path / "record.jsonl"
    pytester.makeconftest("")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECORD", str(record))
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=900)
    result.assert_outcomes(passed=3, failed=1)
    got = {r["test"]: r for r in map(json.loads, record.read_text().splitlines())}
    assert got["a"]["project"] == got["b"]["project"] == got["fail"]["project"]
    assert got["c"]["project"] != got["a"]["project"]
    assert (got["a"]["nodes"], got["c"]["nodes"]) == (2, 1)
    output = result.stdout.str()
    # the failed test's report holds the nodes' logs; every testbed is gone after the run
    assert f"testbed logs ({got['fail']['project']})" in output
    assert "conduit-node:" in output or "broker" in output
    for project in {r["project"] for r in got.values()}:
        ps = flux_testbed.compose.engine_command(  # type: ignore[attr-defined]
            "ps", "--all", "--filter", f"label=com.docker.compose.project={project}", "-q"
        )
        assert ps.stdout.strip() == "", f"{project} was left behind"


UNREACHABLE = """
def test_needs_a_testbed(flux_testbed):
    pass
"""


@pytest.mark.parametrize("required", [False, True], ids=["default", "required"])
def test_without_an_engine_it_skips_with_the_reason_or_fails_when_required(
    pytester: pytest.Pytester, required: bool
) -> None:
    pytester.makepyfile(test_unreachable=UNREACHABLE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_HOST", f"unix://{pytester.path}/no-engine.sock")
        mp.delenv("ENGINE", raising=False)
        args = ["-p", "no:cacheprovider", "-rs"] + (["--flux-testbed-required"] if required else [])
        result = pytester.runpytest_subprocess(*args, timeout=300)
    reason = "needs Docker: no *"  # no engine answering (or, on a bare machine, no docker)
    if required:
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines([f"*required, but cannot run: {reason}*"])
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines([f"SKIPPED*{reason}*"])


def readme_example() -> str:
    """The test file of the README's "Test your own workflow"."""
    text = (REPO / "README.md").read_text().split("## Test your own workflow", 1)[1]
    found = re.search(r"```python\n(.*?)```", text, re.S)
    assert found, "no example test file in the README"
    return found.group(1)


def test_the_readmes_example_test_file_passes_as_written(
    pytester: pytest.Pytester, flux_testbed: object
) -> None:
    """(flux_testbed: only so that this skips, with the reason, where no testbed can run.)"""
    pytester.makepyfile(test_my_workflow=readme_example())
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--flux-testbed-required", timeout=900
    )
    result.assert_outcomes(passed=3)
