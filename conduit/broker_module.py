"""Find, load and remove the conduit broker module on the local broker."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import flux

from conduit.protocol import SERVICE, STATS

SOURCE_TREE_MODULE = Path(__file__).resolve().parent.parent / "module" / "conduit.so"
HOW_TO_BUILD = "run `make module`, or point --module or CONDUIT_MODULE at conduit.so"


class ModuleError(Exception):
    pass


def locate(explicit: str | None = None) -> str:
    """The path (or name) to give to module.load.

    An explicit path, then $CONDUIT_MODULE, then the source tree's build,
    then the bare name, which the broker looks up in its module path.
    """
    for candidate in (explicit, os.environ.get("CONDUIT_MODULE")):
        if candidate:
            path = Path(candidate).resolve()
            if not path.is_file():
                raise ModuleError(f"{candidate}: no such file; {HOW_TO_BUILD}")
            return str(path)
    if SOURCE_TREE_MODULE.is_file():
        return str(SOURCE_TREE_MODULE)
    return SERVICE


def load(h: flux.Flux, path: str, args: list[str]) -> None:
    """Load the module on this broker, replacing one left without a datastore."""
    try:
        _insmod(h, path, args)
        return
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise ModuleError(_load_failure(path, exc)) from exc
    stats = h.rpc(STATS).get()
    if stats["attached"]:
        raise ModuleError(
            f"the conduit on rank {stats['rank']} already serves datastore job "
            f"{flux.job.JobID(stats['datastore']).f58}; cancel it first"
        )
    remove(h)
    try:
        _insmod(h, path, args)
    except OSError as exc:
        raise ModuleError(_load_failure(path, exc)) from exc


def remove(h: flux.Flux) -> None:
    """Remove the module; not being loaded is fine."""
    with contextlib.suppress(FileNotFoundError):
        h.rpc("module.remove", {"name": SERVICE, "cancel": False}).get()


def _insmod(h: flux.Flux, path: str, args: list[str]) -> None:
    h.rpc("module.load", {"path": path, "args": args, "exec": False}).get()


def _load_failure(path: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return f"cannot load the conduit module ({path}): not found; {HOW_TO_BUILD}"
    return (
        f"cannot load the conduit module ({path}): {exc.strerror}; "
        "see `flux dmesg` for the broker's reason"
    )
