"""The conduit's one exception type, and the connection to Flux that raises it.

Every failure a user can meet is a ConduitError whose text says what
failed and what to do; the command line (conduit.cli) prints it as one
line.  Where the failure came from Flux, `errno` carries Flux's errno.
"""

from __future__ import annotations

import errno
import os
import pwd
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import flux

NO_BINDINGS = (
    f"this Python ({sys.executable}) cannot import flux; run it with "
    "`flux python -m conduit ...`, or install flux-python==0.88.0"
)
OUTSIDE_AN_INSTANCE = (
    "run it inside a Flux instance (flux start, flux alloc, or as a job), or set FLUX_URI"
)

# A guest of a multi-user (system) instance cannot use its conduit: the
# module's services, and the KVS where the datastore keeps its store, are
# the instance owner's.  At a site, users run workflows in their own instance.
IN_YOUR_OWN_INSTANCE = (
    "run your workflow in a Flux instance of your own, where you are the owner: "
    "flux alloc -N2 (or flux batch -N2 script.sh) and the conduit's commands inside it"
)


class ConduitError(Exception):
    """A failure with a message for the user, and Flux's errno if it has one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def connect() -> flux.Flux:
    """A handle on the enclosing Flux instance.

    Raises:
        ConduitError: there is no instance to connect to, this Python
            cannot import the flux bindings, or the user is a guest of the
            instance (require_owner).
    """
    try:
        import flux
    except ImportError as exc:
        raise ConduitError(NO_BINDINGS) from exc
    try:
        h = flux.Flux()
    except OSError as exc:
        raise ConduitError(
            f"cannot connect to Flux ({exc.strerror}); {OUTSIDE_AN_INSTANCE}", exc.errno
        ) from exc
    require_owner(h)
    return h


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def require_owner(h: flux.Flux) -> None:
    """Refuse a guest of the instance: its conduit belongs to the instance owner.

    Raises:
        ConduitError: (EPERM) this process's user does not own the instance.
    """
    owner, me = int(h.attr_get("security.owner")), os.getuid()
    if owner != me:
        raise ConduitError(
            f"the conduit of this Flux instance belongs to its owner, {user_name(owner)}; "
            f"{user_name(me)} is a guest here, so the instance refuses the conduit's "
            f"requests (EPERM); {IN_YOUR_OWN_INSTANCE}",
            errno.EPERM,
        )
