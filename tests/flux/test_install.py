"""`make install`, and the datastore's check of the module's flux-core version (real Flux)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conduit import output
from conduit.testbed.native import NativeInstance
from tests.checks import MODULE, REPO

pytestmark = pytest.mark.flux

MARK = b"conduit-flux-core-version="


def test_installed_conduit_runs_without_pythonpath_or_source_tree(
    flux_instance: NativeInstance, tmp_path: Path
) -> None:
    destdir = tmp_path / "root"
    subprocess.run(
        ["make", "install", f"DESTDIR={destdir}", "PREFIX=/opt/conduit"],
        cwd=REPO, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    modules = destdir / "opt/conduit/lib/flux/modules"
    [python_dir] = (destdir / "opt/conduit/lib/flux").glob("python3.*")
    assert (modules / "conduit.so").is_file()
    assert (python_dir / "conduit" / "client.py").is_file()

    env = {k: v for k, v in flux_instance.env.items() if k != "PYTHONPATH"}
    env.update(FLUX_MODULE_PATH_PREPEND=str(modules), FLUX_PYTHONPATH_PREPEND=str(python_dir))
    demo = subprocess.run(
        ["flux", "python", "-m", "conduit", "demo", "--computes", "3", "--sleep", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.splitlines()[-1] == "demo: 3 of 3 compute packets in the final store"
    # what `flux python` imports there is the installed package, which finds the module
    where = subprocess.run(
        ["flux", "python", "-c", "import conduit.broker_module as m; print(m.locate())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert where.stdout.strip() == str(modules / "conduit.so"), where.stderr


def module_built_for(tmp_path: Path, version: bytes) -> Path:
    """A copy of module/conduit.so that says it was built for flux-core `version`."""
    text = MODULE.read_bytes()
    start = text.index(MARK) + len(MARK)
    end = text.index(b"\0", start)
    assert len(version) <= end - start
    patched = tmp_path / "conduit.so"
    patched.write_bytes(text[:start] + version.ljust(end - start, b"\0") + text[end:])
    return patched


def run_datastore(inst: NativeInstance, module: Path) -> subprocess.CompletedProcess[str]:
    return inst.flux(
        "run", "-N1", "-n1", "flux", "python", "-m", "conduit", "datastore", "--packets", "1",
        "--fresh", "--module", str(module), check=False, timeout=60,
    )  # fmt: skip


def test_a_module_built_for_another_minor_version_is_refused(
    flux_instance: NativeInstance, tmp_path: Path
) -> None:
    running = flux_instance.flux("getattr", "version").stdout.strip()
    major, minor, _ = running.split(".")
    other = f"{major}.{int(minor) - 1}.0"
    done = run_datastore(flux_instance, module_built_for(tmp_path, other.encode()))
    assert done.returncode == 1
    [line] = [ln for ln in done.stderr.splitlines() if not ln.startswith("flux-job:")]
    assert line == (
        f"conduit datastore: {tmp_path / 'conduit.so'} was built for flux-core {other}, but this "
        f"instance runs flux-core {running}; rebuild it against the running flux-core: make module"
    )
    assert not flux_instance.module_loaded(0) and not flux_instance.module_loaded(1)


def test_a_patch_level_difference_is_accepted(
    flux_instance: NativeInstance, tmp_path: Path
) -> None:
    running = flux_instance.flux("getattr", "version").stdout.strip()
    major, minor, _ = running.split(".")
    module = module_built_for(tmp_path, f"{major}.{minor}.9".encode())
    ds = flux_instance.submit("datastore", "--packets", "1", "--fresh", "--module", str(module))
    rank = flux_instance.wait_datastore(ds)["rank"]
    [put] = flux_instance.put_all(rank, [{"data": '{"ok": 1}'}])
    assert "ok" in put
    result = flux_instance.datastore_output(ds)
    assert result.finished and result.final_store == {"test": 101, "ok": 1}
    assert output.BYE in result.lines
