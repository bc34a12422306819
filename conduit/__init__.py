"""flux-conduit: stream JSON packets from Flux jobs to a datastore job.

The public API, for a job's own Python (the standard library and flux):

    from conduit import Conduit, ConduitError

    with Conduit() as conduit:                 # leaving the block flushes
        for step in range(100):
            conduit.send({"step": step})       # a future, at once
        conduit.put({"done": True})            # returns once stored

The package is what runs inside Flux jobs; the host side (the compose
testbed, the pytest plugin, the plot) is the subpackage conduit.testbed,
which is neither in the image nor installed by `make install`.  Names are
imported on first use, so `import conduit` needs no flux (the host side
imports conduit.output, say).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_PUBLIC = {
    "Conduit": "conduit.client",
    "Receipt": "conduit.client",
    "Sent": "conduit.sender",
    "ConduitError": "conduit.errors",
}
__all__ = ["Conduit", "ConduitError", "Receipt", "Sent"]  # the keys of _PUBLIC

if TYPE_CHECKING:
    from conduit.client import Conduit, Receipt
    from conduit.errors import ConduitError
    from conduit.sender import Sent


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'conduit' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
