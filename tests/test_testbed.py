"""The compose files of the testbed, without Docker (conduit.testbed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conduit import testbed
from tests.runner import REPO


def services(text: str) -> list[str]:
    """The service names of a generated compose file, in order."""
    section = text.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    return re.findall(r"^  (\S+):$", section, flags=re.MULTILINE)


def test_compose_yaml_is_the_generated_three_node_file() -> None:
    assert (REPO / "compose.yaml").read_text() == testbed.compose_yaml(3)


@pytest.mark.parametrize("nodes", [1, 3, 8])
def test_generated_file_has_nodes_0_to_n_minus_1(nodes: int) -> None:
    text = testbed.compose_yaml(nodes)
    assert services(text) == [f"node{k}" for k in range(nodes)]
    assert text.count("    hostname: node") == nodes
    assert f'NODES: "{nodes}"' in text


def test_command_line_writes_the_same_file_with_its_context() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conduit.testbed", "--nodes", "8", "--context", ".."],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == testbed.compose_yaml(8, context="..")
    assert "\n    context: ..\n" in done.stdout


def test_no_nodes_is_an_error() -> None:
    with pytest.raises(ValueError):
        testbed.compose_yaml(0)


def test_base_image_default_matches_the_dockerfile() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    [default] = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert f"${{BASE_IMAGE:-{default}}}" in testbed.compose_yaml(3)


def compose_v2() -> str | None:
    if shutil.which("docker") is None:
        return "no Docker CLI (`docker` is not on PATH)"
    try:
        done = subprocess.run(
            ["docker", "compose", "version", "--short"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return "`docker compose version` failed"
    if done.returncode != 0 or not done.stdout.strip().lstrip("v").startswith("2"):
        return "no Compose v2 (`docker compose version` failed or is not 2.x)"
    return None


@pytest.mark.parametrize("nodes", [1, 3, 8])
def test_docker_compose_accepts_the_file(nodes: int, tmp_path: Path) -> None:
    """compose.yaml for 3; for other sizes a file elsewhere, as `make up NODES=N` writes."""
    reason = compose_v2()
    if reason:
        pytest.skip(reason)
    if nodes == 3:
        file = REPO / "compose.yaml"
    else:
        file = tmp_path / f"compose.{nodes}.yaml"
        file.write_text(testbed.compose_yaml(nodes, context=os.path.relpath(REPO, tmp_path)))
    done = subprocess.run(
        ["docker", "compose", "-f", str(file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert sorted(config["services"]) == sorted(f"node{k}" for k in range(nodes))
    for name, service in config["services"].items():
        assert service["hostname"] == name
        assert service["environment"]["NODES"] == str(nodes)
        assert service["build"]["context"] == str(REPO)
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
