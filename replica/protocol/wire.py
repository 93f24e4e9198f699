"""Electric's wire vocabulary: header, parameter and control names, offsets, keys and body parsing.

Every string that appears on the wire lives here, named after Electric's own terms, so the
client (``replica.protocol``) and the fake server (``replica.testing``) cannot drift apart.
Pure: no I/O.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, total_ordering
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from replica.errors import ProtocolError

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
    {P_OFFSET, P_HANDLE, P_LIVE, P_LIVE_SSE, P_CURSOR, P_CACHE_BUSTER, P_EXPIRED_HANDLE, P_LOG}
)
SECRET_PARAMS = frozenset({P_SECRET, P_API_SECRET})

# --- message vocabulary ---
UP_TO_DATE = "up-to-date"
MUST_REFETCH = "must-refetch"
SNAPSHOT_END = "snapshot-end"
INSERT, UPDATE, DELETE = "insert", "update", "delete"
OPERATIONS = frozenset({INSERT, UPDATE, DELETE})
REPLICA_DEFAULT, REPLICA_FULL = "default", "full"
LOG_FULL, LOG_CHANGES_ONLY = "full", "changes_only"

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


def quote_pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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


# --- bodies ---


class Change(NamedTuple):
    """One change message: ``operation`` is insert, update or delete; ``value`` maps column → text|None."""

    operation: str
    key: str
    value: dict[str, str | None]
    headers: dict[str, Any]


class Control(NamedTuple):
    """A control message such as up-to-date or snapshot-end."""

    control: str
    headers: dict[str, Any]


Message = Change | Control


class _Message(msgspec.Struct, gc=False):
    """The fast path's view of a message; anything it cannot type goes the careful way."""

    headers: dict[str, Any]
    key: str | msgspec.UnsetType = msgspec.UNSET
    value: dict[str, str | None] | msgspec.UnsetType = msgspec.UNSET


_DECODER = msgspec.json.Decoder(list[_Message])


def parse_body(body: bytes | str) -> list[Message]:
    """Parse a shape-log body (a JSON array of messages) into Change and Control values.

    Event messages (subquery move-in/out) and unknown control messages are kept out of the way:
    events are dropped, unknown controls are returned for the caller to ignore.
    Raises ProtocolError naming what is wrong; nothing is half-returned.

    Well-formed bodies are decoded by msgspec into typed messages (values checked to be strings
    or null in C), with the cyclic GC paused: a 10 MB body is ~100k objects that hold no cycles (collecting
    while building them costs more than the decoding).
    Anything unusual (wrong types, missing fields, invalid JSON) is parsed again by the careful
    stdlib path below, so every error reads the same whichever path found it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse_fast(body)
    finally:
        if enabled:
            gc.enable()


def _parse_fast(body: bytes | str) -> list[Message]:
    try:
        decoded = _DECODER.decode(body)
    except (msgspec.DecodeError, ValueError, RecursionError):  # ValueError: bytes that are not UTF-8
        return _parse_body_careful(body)
    messages: list[Message] = []
    append = messages.append
    for message in decoded:
        headers = message.headers
        key = message.key
        if key is not msgspec.UNSET:
            operation = headers.get("operation")
            value = message.value
            if operation not in OPERATIONS or value is msgspec.UNSET:
                return _parse_body_careful(body)
            append(Change(operation, key, value, headers))
        elif "control" in headers:
            control = headers["control"]
            if not isinstance(control, str) or message.value is not msgspec.UNSET:
                return _parse_body_careful(body)
            append(Control(control, headers))
        elif "event" in headers:
            continue  # subquery move events: not supported, safely ignored
        else:
            return _parse_body_careful(body)
    return messages


def _parse_body_careful(body: bytes | str) -> list[Message]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"response body is not valid JSON ({exc}); it may have been truncated") from exc
    if not isinstance(data, list):
        raise ProtocolError(f"response body must be a JSON array of messages, got {type(data).__name__}")
    messages: list[Message] = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise ProtocolError(f"message {index} is a {type(item).__name__}, not an object")
        headers = item.get("headers")
        if not isinstance(headers, dict):
            raise ProtocolError(f"message {index} has no headers object")
        if "key" in item:
            messages.append(_parse_change(index, item, headers))
        elif "control" in headers:
            control = headers["control"]
            if not isinstance(control, str):
                raise ProtocolError(f"message {index}: control must be a string")
            messages.append(Control(control, headers))
        elif "event" in headers:
            continue  # subquery move events: not supported, safely ignored
        else:
            raise ProtocolError(f"message {index} is neither a change (no key) nor a control message")
    return messages


def _parse_change(index: int, item: dict[str, Any], headers: dict[str, Any]) -> Change:
    key = item["key"]
    operation = headers.get("operation")
    value = item.get("value")
    if not isinstance(key, str):
        raise ProtocolError(f"message {index}: key must be a string")
    if operation not in OPERATIONS:
        raise ProtocolError(f"message {index}: unknown operation {operation!r}")
    if not isinstance(value, dict):
        raise ProtocolError(f"message {index}: value must be an object of column → text")
    for column, text in value.items():
        if text is not None and not isinstance(text, str):
            raise ProtocolError(
                f"message {index}: column {column!r} is a {type(text).__name__}; "
                "Electric sends every value as a string or null"
            )
    return Change(operation, key, value, headers)


# --- secrets never leave the process in text ---

REDACTED = "[redacted]"


def redact_url(url: str) -> str:
    """The URL with the values of secret parameters replaced, safe for logs and errors."""
    parts = urlsplit(url)
    if not parts.query and "@" not in parts.netloc:
        return url
    query = [(k, REDACTED if k in SECRET_PARAMS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    netloc = parts.netloc
    if "@" in netloc:  # user:password@host
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe=",[]\""), parts.fragment))
