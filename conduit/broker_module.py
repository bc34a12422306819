"""Find, check, load and remove the conduit broker module on the local broker."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

import flux
import flux.job

from conduit.errors import ConduitError
from conduit.protocol import SERVICE

SOURCE_TREE_MODULE = Path(__file__).resolve().parent.parent / "module" / "conduit.so"
HOW_TO_BUILD = "run `make module`, or point --module or CONDUIT_MODULE at conduit.so"
# module/conduit.c embeds the version of the flux-core it was built against.
VERSION_MARK = re.compile(rb"conduit-flux-core-version=(\d+)\.(\d+)\.(\d+)")


def locate(explicit: str | None = None) -> str:
    """The path of the conduit.so to load.

    An explicit path, then $CONDUIT_MODULE, then the source tree's build,
    then the broker's module path ($FLUX_MODULE_PATH, as the `flux`
    command sets it; where `make install` puts it).

    Raises:
        ConduitError: none of them has the module.
    """
    for candidate in (explicit, os.environ.get("CONDUIT_MODULE")):
        if candidate:
            path = Path(candidate).resolve()
            if not path.is_file():
                raise ConduitError(f"{candidate}: no such file; {HOW_TO_BUILD}")
            return str(path)
    installed = [
        Path(d) / f"{SERVICE}.so" for d in os.environ.get("FLUX_MODULE_PATH", "").split(":") if d
    ]
    for path in [SOURCE_TREE_MODULE, *installed]:
        if path.is_file():
            return str(path)
    searched = ", ".join(str(p) for p in [SOURCE_TREE_MODULE, *installed])
    raise ConduitError(f"no conduit module in {searched}; {HOW_TO_BUILD}, or `make install`")


def built_for(path: str) -> str | None:
    """The flux-core version module file `path` was built against, if it says."""
    try:
        found = VERSION_MARK.search(Path(path).read_bytes())
    except OSError:
        return None
    return ".".join(x.decode() for x in found.groups()) if found else None


def check_version(h: flux.Flux, path: str) -> None:
    """Refuse a module built for another flux-core minor version than the broker's.

    Flux accepts patch-level differences between a module and its broker,
    not minor ones.
    """
    built = built_for(path)
    running = h.attr_get("version")
    if built is None:
        raise ConduitError(
            f"{path} does not say which flux-core it was built for (built before this check?); "
            "rebuild it: make module"
        )
    if built.split(".")[:2] != running.split(".")[:2]:
        raise ConduitError(
            f"{path} was built for flux-core {built}, but this instance runs flux-core "
            f"{running}; rebuild it against the running flux-core: make module"
        )


def load(h: flux.Flux, path: str, args: list[str], name: str = SERVICE) -> None:
    """Load the module on this broker under `name`, replacing one left without a datastore.

    The name is the module's service: a stream's module answers
    `<name>.put`, `<name>.stats-get`, ... (protocol.service()), so one
    broker can hold a module per stream.
    """
    check_version(h, path)
    try:
        _insmod(h, path, args, name)
        return
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise ConduitError(_load_failure(path, exc), exc.errno) from exc
    stats = h.rpc(f"{name}.stats-get").get()
    if stats["attached"]:
        raise ConduitError(
            f"the conduit {name} on rank {stats['rank']} already serves datastore job "
            f"{flux.job.JobID(stats['datastore']).f58}; cancel it first"
        )
    remove(h, name)
    try:
        _insmod(h, path, args, name)
    except OSError as exc:
        raise ConduitError(_load_failure(path, exc), exc.errno) from exc


def remove(h: flux.Flux, name: str = SERVICE) -> None:
    """Remove the module loaded under `name`; not being loaded is fine."""
    with contextlib.suppress(FileNotFoundError):
        h.rpc("module.remove", {"name": name, "cancel": False}).get()


def _insmod(h: flux.Flux, path: str, args: list[str], name: str) -> None:
    h.rpc("module.load", {"path": path, "args": args, "exec": False, "name": name}).get()


def _load_failure(path: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return f"cannot load the conduit module ({path}): not found; {HOW_TO_BUILD}"
    return (
        f"cannot load the conduit module ({path}): {exc.strerror}; "
        "`flux dmesg | grep conduit` shows the broker's reason"
    )
