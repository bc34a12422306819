"""The compose file of the testbed (conduit.testbed.composefile), checked also by compose."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conduit.testbed import composefile
from tests.checks import REPO


def services(text: str) -> list[str]:
    """The service names of a generated compose file, in order."""
    section = text.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    return re.findall(r"^  (\S+):$", section, flags=re.MULTILINE)


def test_compose_yaml_is_the_generated_file_of_the_default_size() -> None:
    assert (REPO / "compose.yaml").read_text() == composefile.compose_yaml(composefile.DEFAULT_SIZE)


@pytest.mark.parametrize("size", [1, 3, 8])
def test_generated_file_has_nodes_0_to_size_minus_1_and_a_watchdog(size: int) -> None:
    text = composefile.compose_yaml(size)
    assert services(text) == [f"node{k}" for k in range(size)] + ["watchdog"]
    assert text.count("    hostname: node") == size
    assert f'SIZE: "{size}"' in text
    # one build (node0's) and one state volume (rank 0's)
    assert text.count("    build:") == 1
    assert text.count("state:/var/lib/flux") == 1


def test_command_line_writes_the_same_file_with_its_context() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conduit.testbed", "compose-file", "--size", "8", "--context", ".."],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == composefile.compose_yaml(8, context="..")
    assert "\n      context: ..\n" in done.stdout


def test_no_nodes_is_an_error() -> None:
    with pytest.raises(ValueError):
        composefile.compose_yaml(0)


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


@pytest.mark.parametrize("size", [1, 3, 8])
def test_docker_compose_accepts_the_file(size: int, tmp_path: Path) -> None:
    """compose.yaml for the default size; other sizes elsewhere, as `make up` writes them."""
    reason = compose_v2()
    if reason:
        pytest.skip(reason)
    if size == composefile.DEFAULT_SIZE:
        file = REPO / "compose.yaml"
    else:
        file = tmp_path / "compose.yaml"
        file.write_text(composefile.compose_yaml(size, context=os.path.relpath(REPO, tmp_path)))
    env = {k: v for k, v in os.environ.items() if k != "CONDUIT_IMAGE"}
    done = subprocess.run(
        ["docker", "compose", "-f", str(file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "CONDUIT_IMAGE": "flux-conduit:0123456789ab"},
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    nodes = {name: s for name, s in config["services"].items() if name != "watchdog"}
    assert sorted(nodes) == sorted(f"node{k}" for k in range(size))
    for name, service in nodes.items():
        assert service["hostname"] == name
        assert service["environment"]["SIZE"] == str(size)
        assert service["image"] == "flux-conduit:0123456789ab"
        assert service["restart"] == "on-failure"
    assert nodes["node0"]["build"]["context"] == str(REPO)
    assert nodes["node0"]["build"]["dockerfile"] == "docker/Dockerfile"
    watchdog = config["services"]["watchdog"]
    assert watchdog["image"] == "flux-conduit:0123456789ab"
    assert [m["target"] for m in watchdog["volumes"]] == ["/var/run/docker.sock"]
