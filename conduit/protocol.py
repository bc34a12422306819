"""Names shared by the module, the datastore and its clients."""

from __future__ import annotations

import errno

SERVICE = "conduit"
PUT = "conduit.put"
ATTACH = "conduit.attach"
ACK = "conduit.ack"
STATS = "conduit.stats"

# The KVS directory of the conduit, in the instance's primary namespace
# (a job's own KVS calls default to its job namespace).
KVS_NAMESPACE = "primary"
KVS_LOCATION = "conduit.datastore"  # {"rank", "jobid", "host"} of the live datastore
# The store's log: a directory of segments 0, 1, ...; each holds the
# batches of up to SEGMENT_COMMITS commits as JSON lines.  Appending to one
# ever-growing key would make each commit cost more than the last.
KVS_STORE = "conduit.store"
SEGMENT_COMMITS = 64
KVS_COMPUTES = "conduit.computes"  # one key per compute job that checked in

MAX_DATA = 65536  # bytes of "data" the module accepts by default (max-data=)

# Errors after which a put may succeed if tried again: no datastore yet,
# a datastore that went away, a full backlog, a rank that is down.
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
