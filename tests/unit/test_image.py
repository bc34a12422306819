"""The image's build context and tag (conduit.testbed.image, docker/), without Docker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conduit.testbed import composefile, image
from tests.checks import REPO


def test_base_image_default_matches_the_dockerfile() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    [default] = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert default == image.BASE_IMAGE
    assert f"${{BASE_IMAGE:-{default}}}" in composefile.compose_yaml(3)


def copied_files(repo: Path) -> set[Path]:
    """Every file that docker/Dockerfile's COPY lines take from the build context."""
    dockerfile = (repo / "docker" / "Dockerfile").read_text()
    files: set[Path] = set()
    for line in re.findall(r"^COPY (.+)$", dockerfile, flags=re.MULTILINE):
        for source in line.split()[:-1]:
            found = [repo / source] if (repo / source).is_file() else repo.glob(source)
            files.update(p for p in found if p.is_file())
    return files


def test_the_image_tag_hashes_exactly_what_the_dockerfile_copies() -> None:
    dockerfile = REPO / "docker" / "Dockerfile"
    assert set(image.build_inputs(REPO)) == copied_files(REPO) | {dockerfile}


def test_the_dockerfile_builds_the_module_before_copying_the_package() -> None:
    lines = (REPO / "docker" / "Dockerfile").read_text().splitlines()
    first = {
        what: next(i for i, line in enumerate(lines) if line.startswith(what))
        for what in ("COPY module/", "RUN make module", "COPY conduit/*.py")
    }
    assert first["COPY module/"] < first["RUN make module"] < first["COPY conduit/*.py"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the repository's build inputs, the README and the host side's code."""
    host_side = [*(REPO / "conduit" / "testbed").glob("*.py"), REPO / "tests" / "checks.py"]
    for path in [*image.build_inputs(REPO), REPO / "README.md", *host_side]:
        target = tmp_path / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return tmp_path


def test_image_tag_follows_the_build_inputs_only(tree: Path) -> None:
    tag = image.image_tag(tree)
    assert re.fullmatch(r"flux-conduit:[0-9a-f]{12}", tag)
    assert image.image_tag(tree) == tag
    assert image.image_tag(REPO) == tag

    with open(tree / "README.md", "a") as f:
        f.write("\nanother line\n")
    assert image.image_tag(tree) == tag, "the README is not in the image"

    # the host side (the testbed, the plugin, the tests) is not in the image either
    for host_file in ("conduit/testbed/lifecycle.py", "tests/checks.py"):
        with open(tree / host_file, "a") as f:
            f.write("\n# a comment\n")
        assert image.image_tag(tree) == tag, f"{host_file} is not in the image"
    (tree / "conduit" / "testbed" / "new_part.py").write_text("")
    assert image.image_tag(tree) == tag

    with open(tree / "conduit" / "demo.py", "a") as f:
        f.write("\n# an edit\n")
    edited = image.image_tag(tree)
    assert edited != tag

    (tree / "conduit" / "new_module.py").write_text("")
    assert image.image_tag(tree) not in (tag, edited)

    assert image.image_tag(tree, base="another/base:1") != image.image_tag(tree)


def test_node_scripts_are_valid_sh_and_python() -> None:
    for script in ("node-entrypoint.sh", "healthcheck.sh"):
        subprocess.run(["sh", "-n", str(REPO / "docker" / script)], check=True)
    source = (REPO / "docker" / "watchdog.py").read_text()
    compile(source, "watchdog.py", "exec")
    assert os.access(REPO / "docker" / "watchdog.py", os.X_OK)
