"""The testbed's files and rules, without Docker (conduit.testbed, Makefile, docker/)."""

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


def test_compose_yaml_is_the_generated_file_of_the_default_size() -> None:
    assert (REPO / "compose.yaml").read_text() == testbed.compose_yaml(testbed.DEFAULT_SIZE)


@pytest.mark.parametrize("size", [1, 3, 8])
def test_generated_file_has_nodes_0_to_size_minus_1_and_a_watchdog(size: int) -> None:
    text = testbed.compose_yaml(size)
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
    assert done.stdout == testbed.compose_yaml(8, context="..")
    assert "\n      context: ..\n" in done.stdout


def test_no_nodes_is_an_error() -> None:
    with pytest.raises(ValueError):
        testbed.compose_yaml(0)


def test_base_image_default_matches_the_dockerfile() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    [default] = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert default == testbed.BASE_IMAGE
    assert f"${{BASE_IMAGE:-{default}}}" in testbed.compose_yaml(3)


def copied_files(repo: Path) -> set[Path]:
    """Every file that docker/Dockerfile's COPY lines take from the build context."""
    dockerfile = (repo / "docker" / "Dockerfile").read_text()
    files: set[Path] = set()
    for line in re.findall(r"^COPY (.+)$", dockerfile, flags=re.MULTILINE):
        for source in line.split()[:-1]:
            path = repo / source
            found = path.rglob("*") if path.is_dir() else [path]
            files.update(p for p in found if p.is_file() and "__pycache__" not in p.parts)
    return files


def test_the_image_tag_hashes_exactly_what_the_dockerfile_copies() -> None:
    dockerfile = REPO / "docker" / "Dockerfile"
    assert set(testbed.build_inputs(REPO)) == copied_files(REPO) | {dockerfile}


def test_the_dockerfile_builds_the_module_before_copying_the_package() -> None:
    lines = (REPO / "docker" / "Dockerfile").read_text().splitlines()
    first = {
        what: next(i for i, line in enumerate(lines) if line.startswith(what))
        for what in ("COPY module/", "RUN make module", "COPY conduit/")
    }
    assert first["COPY module/"] < first["RUN make module"] < first["COPY conduit/"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the repository's build inputs and README."""
    for path in [*testbed.build_inputs(REPO), REPO / "README.md"]:
        target = tmp_path / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return tmp_path


def test_image_tag_follows_the_build_inputs_only(tree: Path) -> None:
    tag = testbed.image_tag(tree)
    assert re.fullmatch(r"flux-conduit:[0-9a-f]{12}", tag)
    assert testbed.image_tag(tree) == tag
    assert testbed.image_tag(REPO) == tag

    with open(tree / "README.md", "a") as f:
        f.write("\nanother line\n")
    assert testbed.image_tag(tree) == tag, "the README is not in the image"

    with open(tree / "conduit" / "demo.py", "a") as f:
        f.write("\n# an edit\n")
    edited = testbed.image_tag(tree)
    assert edited != tag

    (tree / "conduit" / "new_module.py").write_text("")
    assert testbed.image_tag(tree) not in (tag, edited)

    assert testbed.image_tag(tree, base="another/base:1") != testbed.image_tag(tree)


@pytest.mark.parametrize("text", ["0", "x", "-1", "", "2.5", " "])
def test_a_bad_count_is_one_line_naming_it(text: str) -> None:
    with pytest.raises(testbed.TestbedError) as info:
        testbed.parse_count(text, "NODES", "use NODES=1 or more")
    assert str(info.value) == f"NODES={text}: not a number of nodes; use NODES=1 or more"


def test_counts_parse() -> None:
    assert testbed.parse_count("3", "NODES", "") == 3
    assert testbed.parse_count(64, "NODES", "") == 64


def test_idsets_and_hostlists() -> None:
    assert testbed.parse_idset("") == []
    assert testbed.parse_idset("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert testbed.hostlist([]) == ""
    assert testbed.hostlist([4]) == "node4"
    assert testbed.hostlist([3, 4, 5, 7]) == "node[3-5,7]"
    assert testbed.hostlist(range(3, 8)) == "node[3-7]"


def test_ready_needs_every_started_broker_online_and_its_resources_up() -> None:
    # ranks 3..7 not started (offline, down): ready for 3 nodes
    probe = testbed.Probe(size=8, online=[0, 1, 2], down=[3, 4, 5, 6, 7])
    assert probe.counts(3) == (3, 3)
    assert probe.ready(3)
    ready = testbed.Ready(nodes=3, size=8, seconds=3.42, probe=probe)
    assert ready.line() == (
        "cluster ready: 3 of 3 brokers online, 3 nodes' resources up in 3.4s; "
        "node[3-7] not started (room for 8)"
    )
    # every broker online, but the scheduler still has node2 down: not ready
    late = testbed.Probe(size=3, online=[0, 1, 2], down=[2])
    assert late.counts(3) == (3, 2)
    assert not late.ready(3)
    assert late.describe(3) == "3 of 3 brokers online, 2 nodes' resources up (node2 not yet)"
    # a broker offline has no resources up either
    lost = testbed.Probe(size=3, online=[0, 2], down=[])
    assert lost.counts(3) == (2, 2)
    full = testbed.Ready(nodes=3, size=3, seconds=1.0, probe=testbed.Probe(3, [0, 1, 2], []))
    assert full.line() == "cluster ready: 3 of 3 brokers online, 3 nodes' resources up in 1.0s"


def test_the_makefile_takes_its_defaults_from_the_generator() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    makefile = (REPO / "Makefile").read_text()
    assert not re.search(r"^(NODES|MAX_NODES) \?= *\d", makefile, flags=re.MULTILINE)
    done = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (
        f"defaults: NODES={testbed.DEFAULT_NODES} MAX_NODES={testbed.DEFAULT_SIZE}" in done.stdout
    )


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
    if shutil.which("make") is None:
        pytest.skip("no make")
    project = f"conduit-test-bad-{os.getpid()}"
    # as a user types it, also when the tests run under `make test`
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", target, f"PROJECT={project}", *variables],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    ours = [
        line for line in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)
    ]
    assert ours == [message]
    assert not (REPO / "build" / project).exists()


def test_node_scripts_are_valid_sh_and_python() -> None:
    for script in ("node-entrypoint.sh", "healthcheck.sh"):
        subprocess.run(["sh", "-n", str(REPO / "docker" / script)], check=True)
    source = (REPO / "docker" / "watchdog.py").read_text()
    compile(source, "watchdog.py", "exec")
    assert os.access(REPO / "docker" / "watchdog.py", os.X_OK)


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
    if size == testbed.DEFAULT_SIZE:
        file = REPO / "compose.yaml"
    else:
        file = tmp_path / "compose.yaml"
        file.write_text(testbed.compose_yaml(size, context=os.path.relpath(REPO, tmp_path)))
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
