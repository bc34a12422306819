"""Where the host side finds the image's sources and keeps its own files.

In a checkout of flux-conduit (or an editable install of one) both are
the checkout: the build context is its root, and `build/` holds the
remembered state of `make up` and the Podman service's log.  Installed
from a wheel, the package carries the build context itself (see
`conduit.testbed.image.bundled_context`), and its own files go to the
user's cache directory.
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def in_checkout() -> bool:
    """Whether this package runs from a checkout of the repository (not an installed wheel)."""
    return (CHECKOUT / "docker" / "Dockerfile").is_file() and (CHECKOUT / "module").is_dir()


def work_dir() -> Path:
    """Where the testbed keeps what it writes: build/ of the checkout, else the user's cache."""
    if in_checkout():
        return CHECKOUT / "build"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache) / "flux-conduit"
