"""The testbed as a site: the shared directory (/data on every node) and the site's config.

The shared directory is the host's DATA (default data/ of the checkout),
mounted at /data on every node; the site's own broker config is the
*.toml files of SITE_CONFIG (default docker/site.d/), mounted read-only
at /etc/flux/site and read after the generated config.  A change to those
files recreates the nodes (their SITE_HASH), after the broker has checked
them in a container of its own (`check`), so that a bad file never reaches
a running cluster.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from conduit.testbed.errors import TestbedError
from conduit.testbed.image import build_context
from conduit.testbed.paths import in_checkout, work_dir

if TYPE_CHECKING:
    from conduit.testbed.compose import Compose

# A broker's log line of an error: "<time> job-manager.err[0]: text" -> job-manager, text.
BROKER_ERROR = re.compile(r"^(?:.*\s)?([\w-]+)\.(?:emerg|alert|crit|err)\[[^]]*\]: (.*)$")


def default_data() -> Path:
    """DATA by default: data/ of the checkout, else one in the user's cache."""
    return (build_context() if in_checkout() else work_dir()) / "data"


def default_site() -> Path:
    """SITE_CONFIG by default: docker/site.d/ of the build context."""
    return build_context() / "docker" / "site.d"


def prepare_data(path: Path) -> None:
    """The shared directory, made if missing, writable by the nodes' users.

    The nodes' users (fluxuser, alice, bob) have uids of the image, not
    the host user's (root in CI, 501 on a laptop), so the directory is
    world-writable with the sticky bit, as /tmp: mode 1777, which the
    testbed gives a directory it makes.

    Raises:
        TestbedError: an existing directory that others cannot write.
    """
    if not path.exists():
        path.mkdir(parents=True)
        path.chmod(0o1777)
        return
    if not path.is_dir():
        raise TestbedError(f"DATA={path}: not a directory; give DATA=a directory")
    mode = path.stat().st_mode & 0o7777
    if not mode & 0o002:
        raise TestbedError(
            f"DATA={path}: the nodes' users (fluxuser, alice, bob; uids of the image) cannot "
            f"write there (mode {mode:04o}); `chmod 1777 {path}` lets them, as in /tmp"
        )


def site_files(path: Path) -> list[Path]:
    """The site's broker config files (*.toml), in the order the broker reads them."""
    return sorted(path.glob("*.toml")) if path.is_dir() else []


def site_hash(path: Path) -> str:
    """A hash of the site config: when it changes, `up` recreates the nodes to apply it."""
    digest = hashlib.sha256()
    for file in site_files(path):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def check_site(compose: Compose, site: Path, image: str, size: int, timeout: float = 120) -> None:
    """The site config, as the broker reads it, before any node uses it.

    A rank 0 with the nodes' config (the generated one, then the site's
    files) starts and stops in a container of its own without a network
    (`conduit-node --check`), so the running cluster is not touched.

    Raises:
        TestbedError: the broker refused the config; its own error, in one line.
    """
    if not site_files(site):
        return
    done = compose.engine_command(
        "run", "--rm", "--network", "none", "--hostname", "node0",
        "--env", f"SIZE={size}", "--volume", f"{site.resolve()}:/etc/flux/site:ro",
        image, "--check", timeout=timeout,
    )  # fmt: skip
    if done.returncode == 0:
        return
    said = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line for line in said if BROKER_ERROR.match(line)] or said
    why = errors[0] if errors else f"exit status {done.returncode}"
    why = BROKER_ERROR.sub(r"\1: \2", why).replace("/etc/flux/conduit/", f"{site}/")
    raise TestbedError(
        f"the site config in {site} is refused: {why}; fix it and run `make up` "
        "again (the running cluster, if any, is unchanged)"
    )
