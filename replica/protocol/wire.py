"""Electric's wire vocabulary: header, parameter and control names, offsets and message keys.

Every string that appears on the wire lives here, named after Electric's own terms, so the
client (``replica.protocol``) and the fake server (``replica.testing``) cannot drift apart.
Pure: no I/O. Bodies are read by ``replica.protocol.messages``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, total_ordering

from replica.redaction import SECRET_PARAMS as SECRET_PARAMS  # re-exported: the wire names of the secret
from replica.typemap.schema import quote_ident

# --- response headers (always lower-case here; HTTP header names are case-insensitive) ---
H_HANDLE = "electric-handle"
H_OFFSET = "electric-offset"
H_SCHEMA = "electric-schema"
H_CURSOR = "electric-cursor"
H_UP_TO_DATE = "electric-up-to-date"
H_HAS_DATA = "electric-has-data"
H_SERVER = "electric-server"
H_RETRY_AFTER = "retry-after"
H_ETAG = "etag"
H_CACHE_CONTROL = "cache-control"
H_CONTENT_TYPE = "content-type"
EVENT_STREAM = "text/event-stream"  # the content type of a live SSE answer
EXPOSED_HEADERS = (
    "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,"
    "electric-up-to-date,electric-internal-known-error,retry-after"
)

# --- query parameters ---
P_TABLE = "table"
P_OFFSET = "offset"
P_HANDLE = "handle"
P_LIVE = "live"
P_LIVE_SSE = "live_sse"
P_EXPERIMENTAL_LIVE_SSE = "experimental_live_sse"  # its name in Electric 1.0.21-1.1.x; 1.2+ still reads it
P_CURSOR = "cursor"
P_WHERE = "where"
P_PARAMS = "params"  # sent as params[1]=..., params[2]=...
P_COLUMNS = "columns"
P_REPLICA = "replica"
P_LOG = "log"
P_SECRET = "secret"
P_API_SECRET = "api_secret"
P_CACHE_BUSTER = "cache-buster"
P_EXPIRED_HANDLE = "expired_handle"
# Parameters the client manages itself; a user may not set them.
PROTOCOL_PARAMS = frozenset(
    {P_OFFSET, P_HANDLE, P_LIVE, P_LIVE_SSE, P_EXPERIMENTAL_LIVE_SSE, P_CURSOR, P_CACHE_BUSTER, P_EXPIRED_HANDLE,
     P_LOG}
)

# --- message vocabulary ---
UP_TO_DATE = "up-to-date"
GLOBAL_LAST_SEEN_LSN = "global_last_seen_lsn"  # on up-to-date: the LSN the answer reaches
MUST_REFETCH = "must-refetch"
SNAPSHOT_END = "snapshot-end"
INSERT, UPDATE, DELETE = "insert", "update", "delete"
OPERATIONS = frozenset({INSERT, UPDATE, DELETE})
REPLICA_DEFAULT, REPLICA_FULL = "default", "full"
LOG_FULL, LOG_CHANGES_ONLY = "full", "changes_only"

#: How live changes arrive: a long-poll per change (the default) or one held Server-Sent Events stream.
LIVE_LONG_POLL, LIVE_SSE = "long-poll", "sse"
LIVE_MODES = (LIVE_LONG_POLL, LIVE_SSE)

OFFSET_BEFORE_ALL = "-1"
OFFSET_NOW = "now"


# --- offsets ---

_OFFSET_RE = re.compile(r"([0-9]+)_([0-9]+|inf)")  # ASCII digits only: int() also reads "١"


@total_ordering
@dataclass(frozen=True, eq=True)
class Offset:
    """A position in a shape log: ``-1``, or ``<tx>_<op>`` where op may be ``inf``.

    Ordered numerically (never as strings: ``9_0 < 10_0``, ``10_inf > 10_99999``).
    ``op`` is None for ``inf``. ``tx`` is -1 only for the before-everything offset.
    """

    tx: int
    op: int | None

    @classmethod
    def parse(cls, text: str) -> Offset:
        """Parse an offset; ``now`` is a request-only keyword and is refused here."""
        if text in ("-1", "-1_0"):
            return BEFORE_ALL
        match = _OFFSET_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"invalid offset {text!r}: expected -1 or <int>_<int|inf>")
        tx, op = match.groups()
        return cls(int(tx), None if op == "inf" else int(op))

    def _sort_key(self) -> tuple[int, float]:
        return (self.tx, float("inf") if self.op is None else self.op)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Offset):
            return NotImplemented
        return self._sort_key() < other._sort_key()

    def __str__(self) -> str:
        if self.tx < 0:
            return OFFSET_BEFORE_ALL
        return f"{self.tx}_{'inf' if self.op is None else self.op}"


BEFORE_ALL = Offset(-1, 0)


# --- identifiers and keys ---

_TABLE_PART = re.compile(r'"((?:[^"]|"")*)"|([^".]+)')


def parse_table(text: str) -> tuple[str, str]:
    """Split Electric's ``table`` parameter into (schema, name).

    Unqualified names are in ``public``; unquoted identifiers fold to lower case as in Postgres;
    ``"…"`` quotes keep case and may contain dots (``""`` escapes a quote).
    """
    parts: list[str] = []
    pos = 0
    while True:
        match = _TABLE_PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid table name {text!r}")
        quoted, bare = match.groups()
        if quoted is not None:
            parts.append(quoted.replace('""', '"'))
        else:
            if bare != bare.strip() or not bare:
                raise ValueError(f"invalid table name {text!r}")
            parts.append(bare.lower())
        pos = match.end()
        if pos == len(text):
            break
        if text[pos] != "." or len(parts) == 2:
            raise ValueError(f"invalid table name {text!r}")
        pos += 1
    if len(parts) == 1:
        return "public", parts[0]
    return parts[0], parts[1]


quote_pg_ident = quote_ident  # Postgres and SQLite quote identifiers alike


@lru_cache(maxsize=256)
def relation_key_prefix(schema: str, table: str) -> str:
    """``"schema"."table"`` with Electric's escaping (``/`` → ``//``, ``.`` → ``..``) inside names."""

    def esc(name: str) -> str:
        return name.replace("/", "//").replace(".", "..")

    return f'"{esc(schema)}"."{esc(table)}"'


def build_key(schema: str, table: str, pk_values: Sequence[str | None]) -> str:
    """A message ``key``: the relation, then each PK value quoted with ``/`` doubled; NULL is ``_``."""
    return relation_key_prefix(schema, table) + "/" + key_values(pk_values)


def key_values(pk_values: Sequence[str | None]) -> str:
    """The part of a key after its relation (callers checking many keys add the prefix once)."""
    if len(pk_values) == 1 and pk_values[0] is not None:  # the common case, without a list per key
        return '"' + pk_values[0].replace("/", "//") + '"'
    return "/".join(["_" if value is None else '"' + value.replace("/", "//") + '"' for value in pk_values])
