"""The command line, without Flux."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conduit.cli import parser
from tests.checks import REPO


def test_commands_and_defaults() -> None:
    args = parser().parse_args(["datastore"])
    assert (args.packets, args.fresh, args.quiet) == (5, False, False)
    args = parser().parse_args(["demo", "--compute-ranks", "0,1"])
    assert (args.computes, args.compute_ranks) == (None, [0, 1])  # None: max(5, ranks)


def test_bad_ranks_are_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit:
        parser().parse_args(["demo", "--compute-ranks", "a,b"])
    assert exit.value.code == 2


def test_python_without_flux_gets_one_clear_line() -> None:
    # -I -S: no site-packages, so no flux bindings, whatever this machine has
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from conduit.cli import main; "
        "sys.exit(main(['compute', '1']))"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("conduit compute: this Python")
    assert "cannot import flux" in line and "flux python" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["datastore", "--packets", "-1"],
        ["compute", "-2"],
        ["compute", "nan"],
        ["demo", "--computes", "0"],
        ["bench", "--in-flight", "0"],
        ["bench", "--producers", "0"],
        ["bench", "--producers", "2,-1"],
        ["put", "--batch", "0"],
        ["datastore", "--print", "everything"],
        ["produce", "--count", "x"],
    ],
)
def test_out_of_range_numbers_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        parser().parse_args(argv)
    assert exit.value.code == 2


def test_the_public_api_is_at_the_top_and_importing_it_needs_no_flux() -> None:
    """`import conduit` works where flux does not (the host side imports it); the names load
    their modules when first used, and `__all__` lists exactly them."""
    import conduit

    assert sorted(conduit.__all__) == sorted(conduit._PUBLIC)
    code = "import conduit, sys; print('flux' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
    with pytest.raises(AttributeError):
        conduit.NoSuchName  # noqa: B018
