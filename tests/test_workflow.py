"""The GitHub workflow that users' CI runs: valid, and runs the testbed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.runner import REPO

WORKFLOW = REPO / ".github" / "workflows" / "integration.yml"


def load(path: Path) -> Any:
    yaml = pytest.importorskip("ruamel.yaml", reason="needs ruamel.yaml (check-jsonschema)")
    return yaml.YAML(typ="safe").load(path.read_text())


def test_workflow_matches_the_github_schema() -> None:
    if shutil.which("check-jsonschema") is None:
        pytest.skip("needs check-jsonschema (pip install '.[test]')")
    done = subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_runs_the_testbed_and_keeps_evidence_of_failure() -> None:
    workflow = load(WORKFLOW)
    assert {"push", "pull_request"} <= set(workflow[True] if True in workflow else workflow["on"])
    [job] = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu-")
    runs = [step.get("run", "") for step in job["steps"]]
    order = [
        next(i for i, r in enumerate(runs) if r.startswith(f"make {t}"))
        for t in ("up", "demo", "test", "down")
    ]
    assert order == sorted(order)
    down = job["steps"][order[-1]]
    assert down["if"] == "always()"
    upload = next(
        s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")
    )
    assert upload["if"] == "failure()"
    assert "build/junit.xml" in upload["with"]["path"]
    assert "build/compose-logs.txt" in upload["with"]["path"]
