"""The conduit's one exception type, and the connection to Flux that raises it.

Every failure a user can meet is a ConduitError whose text says what
failed and what to do; the command line (conduit.cli) prints it as one
line.  Where the failure came from Flux, `errno` carries Flux's errno.
"""

from __future__ import annotations

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


class ConduitError(Exception):
    """A failure with a message for the user, and Flux's errno if it has one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def connect() -> flux.Flux:
    """A handle on the enclosing Flux instance.

    Raises:
        ConduitError: there is no instance to connect to, or this Python
            cannot import the flux bindings.
    """
    try:
        import flux
    except ImportError as exc:
        raise ConduitError(NO_BINDINGS) from exc
    try:
        return flux.Flux()
    except OSError as exc:
        raise ConduitError(
            f"cannot connect to Flux ({exc.strerror}); {OUTSIDE_AN_INSTANCE}", exc.errno
        ) from exc
