"""The GitHub workflows: valid, and they lint, run the testbed on amd64 and
arm64, and publish the image for both only from a tag."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.checks import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
INTEGRATION = REPO / ".github" / "workflows" / "integration.yml"
RUNNERS = {"amd64": "ubuntu-latest", "arm64": "ubuntu-24.04-arm"}


def load(path: Path) -> Any:
    yaml = pytest.importorskip("ruamel.yaml", reason="needs ruamel.yaml (check-jsonschema)")
    return yaml.YAML(typ="safe").load(path.read_text())


def triggers(workflow: Any) -> Any:
    """`on:` (YAML 1.1 readers turn the key into True)."""
    return workflow[True] if True in workflow else workflow["on"]


def runners(job: Any) -> set[str]:
    """The runner labels a job runs on, through its matrix."""
    runs_on = job["runs-on"]
    if runs_on.startswith("${{"):
        assert runs_on == "${{ matrix.runner }}", runs_on
        return {leg["runner"] for leg in job["strategy"]["matrix"]["include"]}
    return {runs_on}


def step_running(job: Any, command: str) -> int:
    """The index of the first step whose command starts with `command`."""
    runs = [step.get("run", "") for step in job["steps"]]
    return next(i for i, run in enumerate(runs) if run.startswith(command))


def step_using(job: Any, action: str) -> Any:
    [step] = [s for s in job["steps"] if s.get("uses", "").startswith(f"{action}@")]
    return step


def test_there_are_workflows() -> None:
    assert INTEGRATION in WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_github_schema(path: Path) -> None:
    if shutil.which("check-jsonschema") is None:
        pytest.skip("needs check-jsonschema (pip install '.[test]')")
    done = subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_lints() -> None:
    jobs = load(INTEGRATION)["jobs"]
    assert any(
        any(step.get("run", "") == "make lint" for step in job["steps"]) for job in jobs.values()
    )


def test_testbed_runs_on_amd64_and_arm64_and_keeps_evidence_of_failure() -> None:
    workflow = load(INTEGRATION)
    assert {"push", "pull_request"} <= set(triggers(workflow))
    job = workflow["jobs"]["testbed"]
    assert runners(job) == set(RUNNERS.values())
    order = [step_running(job, f"make {target}") for target in ("up", "demo", "test", "down")]
    assert order == sorted(order)
    assert job["steps"][order[-1]]["if"] == "always()"
    upload = step_using(job, "actions/upload-artifact")
    assert upload["if"] == "failure()"
    assert "${{ matrix.arch }}" in upload["with"]["name"]  # one artifact per leg
    assert "build/junit.xml" in upload["with"]["path"]
    assert "build/compose-logs.txt" in upload["with"]["path"]
    assert "--junitxml=build/junit.xml" in job["steps"][order[2]]["run"]


def test_image_is_built_for_both_architectures_and_pushed_only_from_a_tag() -> None:
    workflow = load(INTEGRATION)
    assert triggers(workflow)["push"]["tags"] == ["v*"]
    job = workflow["jobs"]["publish"]
    assert set(job["needs"]) == {"lint", "testbed"}
    assert "startsWith(github.ref, 'refs/tags/v')" in job["if"]
    assert "github.event_name == 'push'" in job["if"]
    assert job["permissions"]["packages"] == "write"
    assert workflow["permissions"] == {"contents": "read"}
    for action in ("docker/setup-qemu-action", "docker/setup-buildx-action"):
        step_using(job, action)
    login = step_using(job, "docker/login-action")
    assert login["with"]["registry"] == "ghcr.io"
    assert login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    meta = step_using(job, "docker/metadata-action")
    assert meta["with"]["images"].startswith("${{ steps.")
    assert "type=semver,pattern={{version}}" in meta["with"]["tags"]
    build = step_using(job, "docker/build-push-action")
    assert build["with"]["context"] == "."
    assert build["with"]["file"] == "docker/Dockerfile"
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["with"]["push"] is True
    assert build["with"]["tags"] == f"${{{{ steps.{meta['id']}.outputs.tags }}}}"


def test_publish_names_the_image_the_minicluster_uses() -> None:
    """ghcr.io/<repository in lowercase>, tagged with the package's version."""
    job = load(INTEGRATION)["jobs"]["publish"]
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert 'echo "image=ghcr.io/${GITHUB_REPOSITORY,,}"' in runs
    assert 'test "$GITHUB_REF_NAME" = "v$version"' in runs
    assert "conduit.__version__" in runs


def test_published_image_runs_the_demo_on_both_architectures() -> None:
    job = load(INTEGRATION)["jobs"]["published"]
    assert job["needs"] == "publish"
    assert runners(job) == set(RUNNERS.values())
    assert "needs.publish.outputs.image" in job["env"]["IMAGE"]
    up = step_running(job, 'make up IMAGE="$IMAGE"')
    demo = step_running(job, "make demo")
    down = step_running(job, "make down")
    assert up < demo < down
    assert job["steps"][down]["if"] == "always()"
    upload = step_using(job, "actions/upload-artifact")
    assert upload["if"] == "failure()"
    assert "${{ matrix.arch }}" in upload["with"]["name"]
