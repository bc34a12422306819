"""The testbed's command line behind the Makefile (conduit.testbed.cli), without Docker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from conduit.testbed import cli, composefile, errors
from tests.checks import REPO


@pytest.mark.parametrize("text", ["0", "x", "-1", "", "2.5", " "])
def test_a_bad_count_is_one_line_naming_it(text: str) -> None:
    with pytest.raises(errors.TestbedError) as info:
        cli.parse_count(text, "NODES", "use NODES=1 or more")
    assert str(info.value) == f"NODES={text}: not a number of nodes; use NODES=1 or more"


def test_counts_parse() -> None:
    assert cli.parse_count("3", "NODES", "") == 3
    assert cli.parse_count(64, "NODES", "") == 64


def test_the_makefile_takes_its_defaults_from_the_generator() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    makefile = (REPO / "Makefile").read_text()
    assert not re.search(r"^(NODES|MAX_NODES) \?= *\d", makefile, flags=re.MULTILINE)
    done = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (
        f"defaults: NODES={composefile.DEFAULT_NODES} MAX_NODES={composefile.DEFAULT_SIZE}"
        in done.stdout
    )


def make_fails(target: str, *variables: str) -> list[str]:
    """`make TARGET VARIABLES...` as a user types it (also under `make test`), which must fail;
    what it printed on stderr, less make's own `***` line."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", target, *variables],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    return [
        line for line in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)
    ]


@pytest.mark.parametrize(
    "target, variables, message",
    [
        ("up", ["NODES=0"], "make up: NODES=0: not a number of nodes; use NODES=1 or more"),
        ("up", ["NODES=x"], "make up: NODES=x: not a number of nodes; use NODES=1 or more"),
        (
            "up",
            ["NODES=4", "MAX_NODES=2"],
            "make up: NODES=4 is more than MAX_NODES=2; give MAX_NODES=4 or more",
        ),
        ("scale", ["NODES=-2"], "make scale: NODES=-2: not a number of nodes; use NODES=1 or more"),
        ("scale", [], "make scale: give the number of nodes: make scale NODES=N"),
        (
            "up",
            ["ENGINE=lxc"],
            "make up: ENGINE=lxc: not an engine; use ENGINE=docker or ENGINE=podman",
        ),
    ],
)
def test_a_bad_variable_fails_in_one_line_and_leaves_nothing_behind(
    target: str, variables: list[str], message: str
) -> None:
    project = f"conduit-test-bad-{os.getpid()}"
    assert make_fails(target, f"PROJECT={project}", *variables) == [message]
    assert not (REPO / "build" / project).exists()


@pytest.mark.parametrize("target", ["demo", "bench", "logs", "shell"])
def test_a_target_that_needs_a_testbed_says_so_in_one_line_when_none_runs(target: str) -> None:
    ours = make_fails(target, f"PROJECT=conduit-test-none-{os.getpid()}")
    assert len(ours) == 1 and ours[0].startswith(f"make {target}: "), ours
    if shutil.which("docker"):  # with no engine at all, it says that instead
        assert "is running; `make up` starts one" in ours[0]
