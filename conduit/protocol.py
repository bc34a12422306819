"""Names and limits shared by the module (module/conduit.c), the datastore and its clients."""

from __future__ import annotations

import errno

SERVICE = "conduit"
PUT = "conduit.put"
ATTACH = "conduit.attach"
ACK = "conduit.ack"
STATS = "conduit.stats"

MAX_DATA = 65536  # bytes of one packet's "data" the module accepts by default (max-data=)
MAX_DEPTH = 64  # nesting levels of one packet the module accepts by default (max-depth=)
MAX_PACKETS_PER_PUT = 4096  # packets one batch put may carry
DEFAULT_TIMEOUT = 30.0  # seconds a client's put may take, retries included
DEFAULT_BATCH = 64  # packets per request of a client's put_many and send
DEFAULT_LINGER = 0.005  # seconds a sent packet waits at most for its batch to fill
DEFAULT_MAX_PENDING = 4096  # packets a client's send keeps pending (unacknowledged) at most
MODULE_ARGS = (
    "max-data=BYTES, max-depth=LEVELS, backlog=PUTS, backlog-bytes=BYTES, unacked-batches=N"
)

# Errors after which a put may succeed if tried again: no datastore yet,
# a datastore that went away, a full backlog, a rank that is down, no answer.
RETRYABLE_ERRNOS = frozenset(
    {
        errno.ENOSYS,
        errno.ENOTCONN,
        errno.ECONNRESET,
        errno.EAGAIN,
        errno.EHOSTUNREACH,
        errno.ETIMEDOUT,
    }
)
