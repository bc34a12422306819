"""The testbed's image: its build context, its tag, and getting it into the engine.

The image is the base image (the official flux-core one) plus what
docker/Dockerfile copies: the module, the in-job package `conduit/*.py`
and the node scripts.  Its tag is a hash of exactly those files, so an
edit on the host side (this package, the tests, the README) never
changes what the nodes run, and an unchanged tree is never rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import conduit
from conduit.testbed.errors import TestbedError
from conduit.testbed.paths import CHECKOUT, in_checkout, work_dir

if TYPE_CHECKING:
    from conduit.testbed.compose import Compose

IMAGE_NAME = "flux-conduit"
BASE_IMAGE = "fluxrm/flux-core:bookworm-v0.88.0"

# What docker/Dockerfile copies into the image, relative to the build
# context; the image's tag is a hash of their names and contents (and of
# the base image).  tests/unit/test_image.py checks this against the COPY lines.
BUILD_INPUTS = (
    "docker/Dockerfile",
    "Makefile",
    "module/conduit.c",
    "conduit/*.py",
    "docker/node-entrypoint.sh",
    "docker/healthcheck.sh",
    "docker/watchdog.py",
    "docker/system.toml.in",
    "docker/imp.toml",
)
# Where a wheel carries the non-Python build inputs (setup.py puts them there).
BUNDLED = Path(__file__).resolve().parent / "context"


def base_image() -> str:
    """The base image: BASE_IMAGE from the environment, else the official flux-core one."""
    return os.environ.get("BASE_IMAGE") or BASE_IMAGE


def bundled_context() -> Path:
    """A build context made from what an installed wheel carries, in the user's cache.

    The wheel holds docker/, the Makefile and module/conduit.c under
    conduit/testbed/context/, and the in-job package is the installed
    `conduit`; together they are the tree a checkout would give.
    """
    if not (BUNDLED / "docker" / "Dockerfile").is_file():
        raise TestbedError(
            f"this install of flux-conduit carries no build context ({BUNDLED} is missing); "
            "install it from the repository (pip install 'flux-conduit[testbed] @ git+URL'), "
            "or name a published image (--flux-testbed-image / IMAGE=)"
        )
    package = Path(conduit.__file__).resolve().parent
    digest = hashlib.sha256()
    sources = sorted(p for p in BUNDLED.rglob("*") if p.is_file())
    sources += sorted(package.glob("*.py"))
    for path in sources:
        digest.update(path.read_bytes())
    target = work_dir() / f"context-{digest.hexdigest()[:12]}"
    if not target.is_dir():
        new = target.with_name(target.name + f".new-{os.getpid()}")
        shutil.rmtree(new, ignore_errors=True)
        shutil.copytree(BUNDLED, new, ignore=shutil.ignore_patterns("__pycache__"))
        for script in ("node-entrypoint.sh", "healthcheck.sh", "watchdog.py"):
            (new / "docker" / script).chmod(0o755)  # whatever the install kept of the mode
        (new / "conduit").mkdir()
        for path in package.glob("*.py"):
            shutil.copy2(path, new / "conduit" / path.name)
        try:
            new.rename(target)
        except OSError:  # another process made it first
            shutil.rmtree(new, ignore_errors=True)
    return target


def build_context() -> Path:
    """The tree the image is built from: the checkout, or the context an install carries."""
    return CHECKOUT if in_checkout() else bundled_context()


def build_inputs(tree: Path | None = None) -> list[Path]:
    """The files the image is built from, in a stable order."""
    tree = tree or build_context()
    files: set[Path] = set()
    for pattern in BUILD_INPUTS:
        found = sorted(tree.glob(pattern))
        if not found:
            raise TestbedError(f"{pattern}: missing from {tree}; is this a flux-conduit tree?")
        files.update(found)
    return sorted(files)


def image_tag(tree: Path | None = None, base: str | None = None) -> str:
    """flux-conduit:<hash>: the same for the same build inputs, whoever builds them."""
    tree = tree or build_context()
    digest = hashlib.sha256()
    digest.update((base or base_image()).encode() + b"\0")
    for path in build_inputs(tree):
        digest.update(path.relative_to(tree).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"{IMAGE_NAME}:{digest.hexdigest()[:12]}"


def short_ref(ref: str) -> str:
    """flux-conduit:x, where Podman says docker.io/library/flux-conduit:x or localhost/..."""
    for prefix in ("docker.io/library/", "localhost/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def qualified(ref: str) -> str:
    """docker.io/<ref> for a Docker Hub short name, which Podman does not resolve by itself."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}"


def qualified_for(compose: Compose, ref: str) -> str:
    """The name to pull `ref` by on this compose's engine."""
    return qualified(ref) if compose.engine.name == "podman" else ref


def ensure_base_image(compose: Compose, timeout: float = 1800) -> None:
    """Podman: the base image in its store, pulled from Docker Hub if missing.

    Docker's build pulls it by itself.  Podman's would look the short
    name up in the registries of registries.conf, which many hosts
    leave empty, so it is pulled here under its full name.
    """
    base = base_image()
    if compose.engine.name != "podman" or compose.image_present(base):
        return
    ref = qualified_for(compose, base)
    compose.say(f"pulling {ref} into Podman's store")
    done = compose.engine_command("pull", ref, timeout=timeout)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        why = said[-1] if said else f"exit status {done.returncode}"
        raise TestbedError(
            f"cannot pull the base image {ref}: {why}; where Docker has it, "
            f"`podman pull docker-daemon:{base}` copies it into Podman's store"
        )


def ensure_image(compose: Compose, ref: str, published: bool, timeout: float = 1800) -> str:
    """The image `ref` in the engine: pulled if `published`, else built, and only if missing.

    A tag that exists is never built again: a rebuild, even fully cached,
    may give another image id, and compose would then recreate every
    container that runs the tag.  The lock keeps two projects from
    building the same tag at once.
    """
    if compose.image_present(ref):
        return ref
    lock = work_dir() / ".image.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if compose.image_present(ref):
            return ref
        if published:
            compose.say(f"pulling {ref}")
            done = compose.engine_command("pull", qualified_for(compose, ref), timeout=timeout)
            if done.returncode != 0:
                raise TestbedError(f"cannot pull {ref}: {done.stderr.strip()[-300:]}")
            return ref
        ensure_base_image(compose, timeout)
        compose.say(f"building {ref} (its tag is a hash of the build inputs)")
        compose.run("build", "node0", timeout=timeout, show=True, image=ref)
    return ref
