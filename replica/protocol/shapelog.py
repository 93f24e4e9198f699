"""The sans-IO shape client: what to request next, and what a response means.

``ShapeLog`` is one shape's position in its Electric log. It builds the next ``Request``
(pure, idempotent: call again to resend) and turns each ``Response`` into a ``Commit`` for
the store, or raises an error that tells the caller what to do (see ``replica.errors``).
No httpx, anyio, apsw, time or random here: the caller passes in a cache buster.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from replica.protocol import snapshot as inserts
from replica.protocol import answers as replies
from replica.protocol import wire
from replica.errors import ConfigError, ProtocolError, ServerBusy, ShapeError
from replica.typemap.schema import TableSchema

__all__ = ["Checkpoint", "Commit", "Request", "Response", "Shape", "ShapeLog"]


@dataclass(frozen=True)
class Shape:
    """What to sync: a table, optionally filtered (``where`` + ``params``) and projected (``columns``).

    ``name`` is the local SQLite table; by default the table part of ``table`` (no schema, no quotes).
    """

    table: str
    where: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    columns: tuple[str, ...] | None = None
    replica: str = wire.REPLICA_DEFAULT
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.params, Mapping):
            object.__setattr__(self, "params", tuple((str(k), str(v)) for k, v in self.params.items()))
        else:
            object.__setattr__(self, "params", tuple((str(k), str(v)) for k, v in self.params))
        if self.columns is not None and not isinstance(self.columns, tuple):
            object.__setattr__(self, "columns", tuple(self.columns))
        self.validate()

    def validate(self) -> None:
        try:
            wire.parse_table(self.table)
        except ValueError as exc:
            raise ConfigError(f"table: {exc}") from None
        if self.replica not in (wire.REPLICA_DEFAULT, wire.REPLICA_FULL):
            raise ConfigError(f"replica: must be 'default' or 'full', got {self.replica!r}")
        numbers = [k for k, _ in self.params]
        if any(not k.isdigit() for k in numbers):
            raise ConfigError(f"params: keys must be the numbers of $n placeholders, got {numbers}")
        if sorted(int(k) for k in numbers) != list(range(1, len(numbers) + 1)):
            raise ConfigError(f"params: must be numbered 1..n without gaps, got {numbers}")
        if self.params and not self.where:
            raise ConfigError("params: given without a where clause that uses them")
        if self.where is not None and _has_subquery(self.where):
            raise ConfigError("where: subqueries (SELECT …) are not supported by replica yet")
        if self.columns is not None and not self.columns:
            raise ConfigError("columns: must list at least one column (and every primary-key column)")
        if not self.local_name:
            raise ConfigError("name: the local table name must not be empty")

    @property
    def local_name(self) -> str:
        return self.name if self.name is not None else wire.parse_table(self.table)[1]

    def query_params(self) -> list[tuple[str, str]]:
        """The shape-defining query parameters, in a stable order."""
        query = [(wire.P_TABLE, self.table)]
        if self.where:
            query.append((wire.P_WHERE, self.where))
        for number, value in sorted(self.params, key=lambda kv: int(kv[0])):
            query.append((f"{wire.P_PARAMS}[{number}]", value))
        if self.columns is not None:
            query.append((wire.P_COLUMNS, ",".join(wire.quote_pg_ident(c) for c in self.columns)))
        if self.replica != wire.REPLICA_DEFAULT:
            query.append((wire.P_REPLICA, self.replica))
        return query

    def definition(self) -> str:
        """Canonical text of the server-side definition; a checkpoint is only valid for it (R8)."""
        schema, table = wire.parse_table(self.table)
        return json.dumps(
            {
                "table": [schema, table],
                "where": self.where,
                "params": dict(sorted(self.params, key=lambda kv: int(kv[0]))),
                "columns": list(self.columns) if self.columns is not None else None,
                "replica": self.replica,
            },
            sort_keys=True,
            separators=(",", ":"),
        )


def _has_subquery(where: str) -> bool:
    # A rough but safe test: SELECT as a word outside string literals.
    outside = "".join(part for i, part in enumerate(where.split("'")) if i % 2 == 0)
    return "select" in outside.lower().replace("(", " ").split()


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to resume a shape: handle, offset, live cursor and schema.

    ``up_to_date`` is True when the position is a published up-to-date boundary (resume live);
    False when it is a staging position inside a snapshot or burst (resume with non-live requests).
    """

    handle: str | None
    offset: str = wire.OFFSET_BEFORE_ALL
    cursor: str | None = None
    schema: Mapping[str, Any] | None = None
    up_to_date: bool = False


@dataclass(frozen=True)
class Commit:
    """One unit the store writes atomically, together with its checkpoint (R1).

    ``up_to_date`` False: stage ``changes`` (a snapshot or burst still in progress; not visible yet).
    ``up_to_date`` True: publish everything staged plus ``changes`` in one transaction (R2).
    ``refetch`` True: this commit starts a new snapshot; when it is published it replaces every row
    of the table (the old rows stay visible until then).
    ``changes`` is an ``inserts.BodyChanges`` when the response was at least ``WHOLE_BODY_BYTES`` of
    whole-row inserts: validated, kept as the body for SQLite to read.
    """

    shape: Shape
    changes: Sequence[wire.Change]
    checkpoint: Checkpoint
    up_to_date: bool
    refetch: bool = False


@dataclass(frozen=True)
class Request:
    """The next GET: query parameters in order, and whether it is a live long-poll."""

    params: tuple[tuple[str, str], ...]
    live: bool


@dataclass(frozen=True)
class Response:
    """A whole HTTP response, independent of any HTTP library. Header names are lower case."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


# --- the state machine ---

# Bodies this big of nothing but whole-row inserts (snapshot chunks) are validated without building
# a Change per row and handed on as the body itself (inserts.BodyChanges), which the store lets SQLite read.
WHOLE_BODY_BYTES = 16 * 1024
STALE_RETRY_LIMIT = 3  # stale cached responses in a row before giving up to the caller's backoff


class ShapeLog:
    """One shape's position in its log. Feed it every response; it says what to request next.

    Phases: *initial* (offset -1, after a start or a 409), *syncing* (non-live requests until a
    response ends with up-to-date), *live* (long-polls with the cursor echoed). ``receive`` returns
    a ``Commit`` when there is something to write: a staging step (rows of an unfinished snapshot or
    burst, checkpointed so a crash resumes mid-way) or a publish at up-to-date.
    """

    def __init__(self, shape: Shape, checkpoint: Checkpoint | None = None, *, nonce: str = "0") -> None:
        self.shape = shape
        self._nonce = nonce
        self._busts = 0
        self._bust = False
        self._stale = 0
        self.expired_handle: str | None = None
        self._relation: tuple[str, str] | None = None
        self._base_params = shape.query_params()
        if checkpoint is None or checkpoint.offset == wire.OFFSET_BEFORE_ALL:
            self._restart(checkpoint.handle if checkpoint else None)
        else:
            self.handle = checkpoint.handle
            self.offset = checkpoint.offset
            self.cursor = checkpoint.cursor
            self.schema = checkpoint.schema
            self.live = checkpoint.up_to_date
            self.refetch = False
            # A staging checkpoint means rows wait on disk for the next up-to-date.
            self.staged = not checkpoint.up_to_date

    def _restart(self, handle: str | None) -> None:
        self.handle = handle
        self.offset = wire.OFFSET_BEFORE_ALL
        self.cursor: str | None = None
        self.schema: Mapping[str, Any] | None = None
        self.live = False
        self.refetch = True  # the next commit starts a snapshot that replaces the table's rows
        self.staged = False

    @property
    def phase(self) -> str:
        if self.offset == wire.OFFSET_BEFORE_ALL:
            return "initial"
        return "live" if self.live else "syncing"

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.handle, self.offset, self.cursor, self.schema, self.live)

    def next_request(self) -> Request:
        """The request to send now. Pure: calling it again returns an equal request."""
        params = list(self._base_params)
        params.append((wire.P_OFFSET, self.offset))
        if self.handle is not None:
            # Ignored by the server at offset -1, where it still keeps cache keys apart.
            params.append((wire.P_HANDLE, self.handle))
        if self.live:
            params.append((wire.P_LIVE, "true"))
            params.append((wire.P_CURSOR, self.cursor or ""))
        if self.expired_handle is not None:
            params.append((wire.P_EXPIRED_HANDLE, self.expired_handle))
        if self._bust:
            params.append((wire.P_CACHE_BUSTER, f"{self._nonce}-{self._busts}"))
        # Sorted, like the official client, so identical requests collapse in a CDN.
        params.sort(key=lambda kv: kv[0])
        return Request(tuple(params), self.live)

    def snapshot_schema(self, response: Response) -> Mapping[str, Any] | None:
        """The electric-schema ``receive`` would read ``response``'s body with if it may be a snapshot
        chunk (a 200 to a non-live request, at least ``WHOLE_BODY_BYTES``), else None. Changes nothing."""
        if response.status != 200 or self.live or len(response.body) < WHOLE_BODY_BYTES:
            return None
        return self.schema if self.schema is not None else replies.peek_schema(response.headers)

    def receive(self, response: Response) -> Commit | None:
        """Advance on one response to the request last built. Raises per ``replica.errors``."""
        status = response.status
        if status == 200:
            return self._receive_ok(response)
        if status == 204:  # servers before 1.0.4 answered a quiet long-poll like this
            if not self.live:
                raise ProtocolError("204 No Content is only valid as the answer to a live long-poll")
            self._accept_position(response, strict=False, up_to_date=True)
            return self._after_data((), up_to_date=True)
        if status == 409:
            self._must_refetch(response.headers.get(wire.H_HANDLE) or None)
            return None
        if status == 400 and replies.is_out_of_bounds(response.body):
            # The server lost our position (restart, handover): start the log again.
            self._must_refetch(None)
            return None
        if status in (429,) or 500 <= status <= 599:
            raise ServerBusy(
                f"server answered {status} {replies.summary(response.body)}; retrying with backoff",
                status=status,
                retry_after=replies.retry_after_seconds(response.headers.get(wire.H_RETRY_AFTER)),
            )
        if status in (400, 401, 403, 404, 405, 406, 410, 413, 414, 422):
            raise ShapeError(replies.refusal_message(status, response.body), status=status)
        raise ProtocolError(f"unexpected HTTP status {status} {replies.summary(response.body)}")

    def _receive_ok(self, response: Response) -> Commit | None:
        handle = response.headers.get(wire.H_HANDLE)
        if handle is not None and handle == self.expired_handle:
            # A cache replayed a response of the handle we were told is gone: ask again, differently.
            self._stale += 1
            if self._stale > STALE_RETRY_LIMIT:
                self._stale = 0
                raise ProtocolError(
                    f"a cache keeps serving responses of expired shape handle {handle!r}; "
                    "check the caching proxy in front of Electric"
                )
            self._bump_cache_buster()
            return None
        # Validate everything before changing any state: a bad response is retried at the same offset.
        schema = self.schema if self.schema is not None else replies.peek_schema(response.headers)
        whole = None
        if schema and len(response.body) >= WHOLE_BODY_BYTES:
            check = functools.partial(replies.check_row_keys, schema=schema, relation=self._table())
            whole = inserts.parse_whole_inserts(response.body, tuple(schema), check)
        if whole is not None:
            changes: Sequence[wire.Change] = whole.changes  # the body itself: SQLite reads it
            up_to_date = whole.up_to_date
        else:
            messages = wire.parse_body(response.body)
            up_to_date = False
            for index, message in enumerate(messages):
                if isinstance(message, wire.Control) and message.control == wire.UP_TO_DATE:
                    if index != len(messages) - 1:
                        raise ProtocolError("up-to-date must be the last message of a response")
                    up_to_date = True
            changes = tuple(m for m in messages if isinstance(m, wire.Change))
            if changes:
                replies.check_keys(changes, schema, self._table())
        self._accept_position(response, strict=True, up_to_date=up_to_date)
        self._stale = 0
        return self._after_data(changes, up_to_date=up_to_date)

    def _table(self) -> tuple[str, str]:
        if self._relation is None:
            self._relation = wire.parse_table(self.shape.table)
        return self._relation

    def _accept_position(self, response: Response, *, strict: bool, up_to_date: bool) -> None:
        headers = response.headers
        handle = headers.get(wire.H_HANDLE)
        offset = headers.get(wire.H_OFFSET)
        cursor = headers.get(wire.H_CURSOR)
        raw_schema = headers.get(wire.H_SCHEMA)
        if strict:
            required = [wire.H_HANDLE, wire.H_OFFSET]
            required.append(wire.H_CURSOR if self.live else wire.H_SCHEMA)
            missing = [name for name in required if headers.get(name) is None]
            if missing and not (missing == [wire.H_SCHEMA] and self.schema is not None):
                raise ProtocolError(
                    f"response lacks the {', '.join(missing)} header(s); a proxy may be stripping "
                    "electric-* headers (forward them, and expose them if CORS applies)"
                )
        if handle is not None and self.offset != wire.OFFSET_BEFORE_ALL and handle != self.handle:
            raise ProtocolError(f"shape handle changed from {self.handle!r} to {handle!r} without a 409 must-refetch")
        if offset is not None:
            try:
                new = wire.Offset.parse(offset)
            except ValueError as exc:
                raise ProtocolError(f"malformed electric-offset header: {exc}") from None
            old = wire.Offset.parse(self.offset)
            if new < old:
                raise ProtocolError(f"electric-offset went backwards from {self.offset} to {offset}")
            if new == old and strict and not self.live and not up_to_date:
                # R5: a non-live answer that does not move would have us ask the same thing forever.
                raise ProtocolError(f"server did not advance past offset {offset} in a non-live response")
        schema = self.schema
        if raw_schema is not None and schema is None:
            try:
                schema = json.loads(raw_schema)
            except (ValueError, RecursionError) as exc:
                raise ProtocolError(f"electric-schema header is not JSON: {exc}") from None
            if not isinstance(schema, dict):
                raise ProtocolError("electric-schema header must be a JSON object of column → type")
            TableSchema.from_electric(schema)  # ShapeError now, before anything is staged with it
        # All checks passed: move.
        if handle is not None:
            self.handle = handle
        if offset is not None:
            self.offset = offset
        if cursor is not None:
            self.cursor = cursor
        self.schema = schema
        self._bust = False

    def _after_data(self, changes: Sequence[wire.Change], *, up_to_date: bool) -> Commit | None:
        was_live = self.live
        if up_to_date:
            self.live = True
            if changes or self.staged or self.refetch:
                return self._commit(changes, up_to_date=True)
            return None  # a quiet long-poll: nothing new to write
        if changes or self.refetch or not was_live:
            # Non-live progress is checkpointed even without rows (e.g. a chunk of just snapshot-end),
            # so a crash mid-snapshot resumes mid-snapshot.
            return self._commit(changes, up_to_date=False)
        return None

    def _commit(self, changes: Sequence[wire.Change], *, up_to_date: bool) -> Commit:
        # A staging checkpoint is never "up to date": resuming from it goes non-live, and the
        # server's next up-to-date publishes what waits on disk.
        checkpoint = Checkpoint(self.handle, self.offset, self.cursor, self.schema, up_to_date)
        commit = Commit(self.shape, changes, checkpoint, up_to_date, refetch=self.refetch)
        self.refetch = False
        self.staged = not up_to_date
        return commit

    def _must_refetch(self, new_handle: str | None) -> None:
        if self.handle is not None:
            self.expired_handle = self.handle
        self._restart(new_handle)
        self._bump_cache_buster()

    def _bump_cache_buster(self) -> None:
        self._busts += 1
        self._bust = True
