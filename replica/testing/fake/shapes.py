"""Shape definitions and shape logs: one log per definition, shared by every client.

A ``ShapeLog`` is one instance of a shape (one handle): a snapshot taken when it was created,
split into chunks ``0_0 … 0_n`` (the last one ends with ``snapshot-end``), followed by the
change log at offsets ``<lsn>_<op>``. Log chunk boundaries are fixed as entries are appended,
so re-reading ``(handle, offset)`` returns the same entries, as with Electric's storage.
"""

from __future__ import annotations

import bisect
import json
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from replica.protocol import wire
from replica.testing.fake.subquery import Moves, has_subquery, split_where
from replica.testing.fake.tables import Row, Table
from replica.testing.fake.where import Predicate, Tables, column_kind, compile_where

__all__ = ["Chunk", "Entry", "ShapeDef", "ShapeLog", "parse_columns", "resolver", "table_kinds"]

SNAPSHOT_END_OFFSET = wire.Offset(0, None)  # 0_inf: the end of the snapshot, the start of the log


def parse_columns(text: str) -> list[str]:
    """Split a ``columns`` parameter: comma-separated, ``"quoted"`` (``""`` escapes) or bare (lower-cased)."""
    names: list[str] = []
    i = 0
    while True:
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == '"':
            j, name = i + 1, []
            while True:
                if j >= len(text):
                    raise ValueError("Invalid column list: unterminated quoted identifier")
                if text[j] == '"':
                    if text[j + 1 : j + 2] == '"':
                        name.append('"')
                        j += 2
                        continue
                    break
                name.append(text[j])
                j += 1
            names.append("".join(name))
            i = j + 1
            while i < len(text) and text[i] == " ":
                i += 1
        else:
            end = text.find(",", i)
            end = len(text) if end < 0 else end
            bare = text[i:end].strip()
            if not bare or '"' in bare:
                raise ValueError("Invalid zero-length delimited identifier" if not bare else "Invalid column list")
            names.append(bare.lower())
            i = end
        if i >= len(text):
            return names
        if text[i] != ",":
            raise ValueError("Invalid column list: expected a comma")
        i += 1


@dataclass(frozen=True)
class ShapeDef:
    """Everything that identifies a shape. Equal definitions share one log (and handle)."""

    schema: str
    table: str
    where: str | None = None
    params: tuple[str, ...] = ()
    columns: tuple[str, ...] | None = None  # None = all columns
    replica: str = wire.REPLICA_DEFAULT
    log: str = wire.LOG_FULL

    def selected(self, table: Table) -> list[str]:
        """Selected columns in table order."""
        if self.columns is None:
            return list(table.columns)
        chosen = set(self.columns)
        return [c for c in table.columns if c in chosen]

    def predicate(self, table: Table, tables: Tables | None = None) -> Predicate | None:
        """The compiled where clause (raises WhereError), or None for no filter; ``tables``: those its
        subqueries read."""
        if self.where is None:
            return None
        custom = table.compile_where(self.where, self.params)
        if custom is not None:  # a source with its own evaluator (Postgres asks Postgres)
            return custom
        return compile_where(self.where, self.params, table_kinds(table), tables)

    def phash(self) -> int:
        # Stable 27-bit number shaped like Elixir's :erlang.phash2 output in Electric handles.
        text = json.dumps([self.schema, self.table, self.where, self.params, self.columns, self.replica, self.log])
        return zlib.crc32(text.encode()) & 0x7FFFFFF


def table_kinds(table: Table) -> dict[str, str]:
    """How the where evaluator compares each column of ``table``."""
    return {c: column_kind(table.type_of(c), int(table.columns[c].get("dims", 0))) for c in table.columns}


def resolver(find: Callable[[str, str], Table | None]) -> Tables:
    """The ``Tables`` of a where's subqueries, from a (schema, name) → Table lookup."""
    def tables(name: str) -> tuple[dict[str, str], Callable[[], Iterable[Row]]]:
        schema, bare = wire.parse_table(name)
        table = find(schema, bare)
        if table is None:
            raise KeyError(name)
        return table_kinds(table), lambda: list(table.rows.values())
    return tables


@dataclass
class Entry:
    """One log entry: its offset, the message, and the message already encoded as JSON."""

    offset: wire.Offset
    message: dict[str, Any]
    encoded: bytes


@dataclass
class Chunk:
    """What a read returns: encoded messages, the response offset, and whether the log end was reached."""

    parts: list[bytes]
    offset: wire.Offset
    at_end: bool
    last_lsn: int | None = None  # commit LSN of the last change in the chunk
    messages: list[dict[str, Any]] = field(default_factory=list)


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


class ShapeLog:
    """One shape instance: the snapshot chunks and the change log behind one handle."""

    def __init__(
        self,
        definition: ShapeDef,
        handle: str,
        table: Table,
        *,
        chunk_bytes: int,
        snapshot_xid: int,
        tables: Tables | None = None,
    ) -> None:
        self.definition = definition
        self.handle = handle
        self.chunk_bytes = max(1, chunk_bytes)
        self.expired = False
        self.taken_at: int | None = None  # the database's LSN when the snapshot was taken (FakeElectric's)
        self.columns = definition.selected(table)
        self.schema = table.electric_schema(self.columns)
        self._predicate = definition.predicate(table, tables)
        #: A subquery shape's tags and what its clients hold (``fake.subquery``); None for a plain shape.
        self.moves: Moves | None = None
        if tables is not None and has_subquery(definition.where):
            assert definition.where is not None
            self.moves = Moves(split_where(definition.where, definition.params, table_kinds(table), tables), handle)
        self.table = table
        self.relation = [table.schema, table.name]
        self.entries: list[Entry] = []
        self._offsets: list[wire.Offset] = []  # parallel to entries, for bisect
        self._chunk_ends: list[int] = []  # indexes into entries of the last entry of each closed chunk
        self._open_chunk_bytes = 0
        self.snapshot: list[list[bytes]] = self._take_snapshot(table, snapshot_xid)

    # --- building ---

    def includes(self, row: Row | None) -> bool:
        return row is not None and (self._predicate is None or self._predicate(row))

    def project(self, table: Table, row: Row, *, snapshot: bool = False) -> dict[str, str | None]:
        if snapshot:
            return {c: table.snapshot_value(c, row[c]) for c in self.columns}
        return {c: row[c] for c in self.columns}

    def _take_snapshot(self, table: Table, xid: int) -> list[list[bytes]]:
        rows = [row for row in table.rows.values() if self.includes(row)]
        # The fake commits transactions atomically, so no transaction is ever in progress.
        return self.chunk_snapshot(table, rows, xmin=xid, xmax=xid, xip=())

    def chunk_snapshot(
        self, table: Table, rows: Iterable[Row], *, xmin: int, xmax: int, xip: Sequence[int]
    ) -> list[list[bytes]]:
        """Snapshot chunks of ``rows`` (already filtered by the where clause) ending with
        ``snapshot-end`` carrying the snapshot's visibility (a Postgres-backed source reuses this)."""
        chunks: list[list[bytes]] = [[]]
        size = 0
        if self.definition.log == wire.LOG_FULL:
            for row in rows:
                message = {
                    "key": table.key(row),
                    "value": self.project(table, row, snapshot=True),
                    "headers": {"operation": wire.INSERT, "relation": self.relation},
                }
                if self.moves is not None:
                    message["headers"].update(self.moves.headers(row))
                    self.moves.hold(table.key(row), row)
                if size >= self.chunk_bytes:
                    chunks.append([])
                    size = 0
                encoded = _encode(message)
                chunks[-1].append(encoded)
                size += len(encoded) + 1
        if size >= self.chunk_bytes:
            chunks.append([])  # snapshot-end alone in its chunk, as Electric may do
        headers = {"control": wire.SNAPSHOT_END, "xmin": str(xmin), "xmax": str(xmax), "xip_list": [str(x) for x in xip]}
        chunks[-1].append(_encode({"headers": headers}))
        return chunks

    def append(self, offset: wire.Offset, message: dict[str, Any]) -> None:
        encoded = _encode(message)
        self.entries.append(Entry(offset, message, encoded))
        self._offsets.append(offset)
        self._open_chunk_bytes += len(encoded) + 1
        if self._open_chunk_bytes >= self.chunk_bytes:
            self._chunk_ends.append(len(self.entries) - 1)
            self._open_chunk_bytes = 0

    # --- reading ---

    @property
    def latest_offset(self) -> wire.Offset:
        return self.entries[-1].offset if self.entries else SNAPSHOT_END_OFFSET

    def last_snapshot_chunk(self) -> int:
        return len(self.snapshot) - 1

    def in_bounds(self, offset: wire.Offset) -> bool:
        return offset <= self.latest_offset

    def read(self, offset: wire.Offset) -> Chunk:
        """Entries after ``offset`` (exclusive) up to the end of the chunk holding the first of them."""
        if offset == wire.BEFORE_ALL:
            return Chunk(list(self.snapshot[0]), wire.Offset(0, 0), at_end=False)
        if offset.tx == 0 and offset.op is not None and offset.op < self.last_snapshot_chunk():
            index = offset.op + 1
            return Chunk(list(self.snapshot[index]), wire.Offset(0, index), at_end=False)
        start = bisect.bisect_right(self._offsets, offset)
        if start == len(self.entries):
            # Nothing new: the response offset stays put, except that reading past the
            # snapshot moves the client to 0_inf, the start of the log.
            return Chunk([], max(offset, SNAPSHOT_END_OFFSET) if offset.tx == 0 else offset, at_end=True)
        chunk = bisect.bisect_left(self._chunk_ends, start)
        stop = self._chunk_ends[chunk] + 1 if chunk < len(self._chunk_ends) else len(self.entries)
        entries = self.entries[start:stop]
        return Chunk(
            [entry.encoded for entry in entries],
            entries[-1].offset,
            at_end=stop == len(self.entries),
            last_lsn=entries[-1].offset.tx,
            messages=[entry.message for entry in entries],
        )


def change_messages(
    log: ShapeLog,
    table: Table,
    old: Row | None,
    new: Row | None,
) -> list[dict[str, Any]]:
    """The messages (0, 1 or 2; headers without lsn/op/txids) one row change produces for a shape.

    A second message only comes from a key change (delete + insert); callers place it at k+1.
    """
    was, now = log.includes(old), log.includes(new)
    full = log.definition.replica == wire.REPLICA_FULL
    relation = log.relation

    def insert(row: Row, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"operation": wire.INSERT, "relation": relation, **(extra or {})}
        return {"key": table.key(row), "value": log.project(table, row), "headers": headers}

    def delete(row: Row, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        value = log.project(table, row) if full else {c: row[c] for c in table.pk if c in log.columns}
        headers = {"operation": wire.DELETE, "relation": relation, **(extra or {})}
        return {"key": table.key(row), "value": value, "headers": headers}

    if not was and not now:
        return []
    if not was:
        assert new is not None
        return [insert(new)]
    assert old is not None
    if not now:
        return [delete(old)]
    assert new is not None
    old_key, new_key = table.key(old), table.key(new)
    if old_key != new_key:
        return [delete(old, {"key_change_to": new_key}), insert(new, {"key_change_from": old_key})]
    changed = [c for c in log.columns if old[c] != new[c]]
    if not changed:
        return []  # no-op, or only columns outside the shape changed
    message: dict[str, Any] = {"key": new_key, "headers": {"operation": wire.UPDATE, "relation": relation}}
    if full:
        message["value"] = log.project(table, new)
        message["old_value"] = {c: old[c] for c in changed}
    else:
        message["value"] = {c: new[c] for c in _pk_then(table, log.columns, changed)}
    return [message]


def _pk_then(table: Table, selected: Sequence[str], changed: Iterable[str]) -> list[str]:
    wanted = set(table.pk) | set(changed)
    return [c for c in selected if c in wanted]
