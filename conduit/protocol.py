"""Names and limits shared by the module (module/conduit.c), the datastore and its clients."""

from __future__ import annotations

import errno
import re

from conduit.errors import ConduitError

SERVICE = "conduit"  # the module's name, and its service, for the default stream
PUT = "conduit.put"
ATTACH = "conduit.attach"
ACK = "conduit.ack"
STATS = "conduit.stats-get"  # what `flux module stats conduit` reads

DEFAULT_STREAM = "default"
# A stream name is one word of a service name and of a KVS key: no dots.
STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")

MAX_DATA = 65536  # bytes of one packet's "data" the module accepts by default (max-data=)
MAX_DEPTH = 64  # nesting levels of one packet the module accepts by default (max-depth=)
MAX_PACKETS_PER_PUT = 4096  # packets one batch put may carry
DEFAULT_TIMEOUT = 30.0  # seconds a client's put may take, retries included
DEFAULT_BATCH = 64  # packets per request of a client's put_many and send
DEFAULT_LINGER = 0.005  # seconds a sent packet waits at most for its batch to fill
DEFAULT_MAX_PENDING = 4096  # packets a client's send keeps pending (unacknowledged) at most
# The stream's log (conduit/kvsdir.py): a segment takes no more commits
# once it holds this many, or this many bytes.
SEGMENT_COMMITS = 64
SEGMENT_BYTES = 4 * 1024 * 1024
# Segments a directory of the log holds: a commit rewrites the directory
# of its segment, so that directory stays small (conduit/kvsdir.py).
SEGMENTS_PER_DIR = 16
MODULE_ARGS = (
    "max-data=BYTES, max-depth=LEVELS, backlog-packets=N, backlog-bytes=BYTES, unacked-batches=N"
)


def segment_path(n: int) -> str:
    """Where log segment `n` is under the stream's ROOT.log: "<directory>.<n in it>"."""
    return f"{n // SEGMENTS_PER_DIR}.{n % SEGMENTS_PER_DIR}"


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


def check_stream(name: str) -> str:
    """`name` if it can name a stream.

    Raises:
        ConduitError: it cannot (empty, too long, or a character other
            than letters, digits, '-' and '_').
    """
    if not STREAM_NAME.fullmatch(name):
        raise ConduitError(
            f"{name!r} cannot name a stream: use 1 to 63 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def service(stream: str) -> str:
    """The name the module serving `stream` is loaded under: conduit, or conduit-STREAM."""
    check_stream(stream)
    return SERVICE if stream == DEFAULT_STREAM else f"{SERVICE}-{stream}"


def topic(stream: str, method: str) -> str:
    """The topic of `method` (put, attach, ack, stats-get) on the module serving `stream`."""
    return f"{service(stream)}.{method}"
