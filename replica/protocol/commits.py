"""The values the ShapeLog exchanges with its caller: ``Request`` out, ``Response`` in, and the
``Commit`` (with its ``Checkpoint``) that the store writes in one transaction. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from replica.protocol import wire
from replica.protocol.messages import Change, Move
from replica.protocol.shape import Shape
from replica.protocol.snapshot import InsertBody
from replica.protocol.txids import Visibility
from replica.typemap.schema import TableSchema

__all__ = ["Ahead", "Changes", "Checkpoint", "Commit", "Request", "Response"]

#: What a commit carries: change messages (and a subquery shape's move events) in log order, or a
#: snapshot chunk kept as its body.
Changes = tuple[Change | Move, ...] | InsertBody
#: Called with a body that should be a snapshot chunk, and the table it would fill, before the
#: body is validated: the caller may start converting it meanwhile (``replica.fast``).
Ahead = Callable[[bytes, TableSchema], None]


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
    ``changes`` is an ``InsertBody`` when the response was at least ``WHOLE_BODY_BYTES`` of
    whole-row inserts: validated, kept as the body for SQLite to read; else Change messages.
    ``table``: the TableSchema the changes are read with (the ShapeLog's own; built from the
    checkpoint's schema and the shape's types when not given).
    ``complete``: at up-to-date, the LSN the shape is complete up to (``global_last_seen_lsn``).
    ``snapshot``: what the snapshot these changes belong to sees, when a ``snapshot-end`` came in them.
    """

    shape: Shape
    changes: Changes
    checkpoint: Checkpoint
    up_to_date: bool
    refetch: bool = False
    table: TableSchema | None = field(default=None, compare=False)
    complete: int | None = None
    snapshot: Visibility | None = None

    def table_schema(self) -> TableSchema | None:
        if self.table is not None:
            return self.table
        schema = self.checkpoint.schema
        return None if schema is None else TableSchema.from_electric(schema, self.shape.overrides)


@dataclass(frozen=True)
class Request:
    """The next GET: query parameters in order, whether it is live, and whether it asks for an
    event stream (``sse``: a held Server-Sent Events answer, read with ``replica.protocol.stream``)."""

    params: tuple[tuple[str, str], ...]
    live: bool
    sse: bool = False


@dataclass(frozen=True)
class Response:
    """A whole HTTP response, independent of any HTTP library. Header names are lower case."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
