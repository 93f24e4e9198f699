"""A subquery shape's tags: why each row is in the shape, kept beside its table, and its moves applied.

Electric tags each row of a shape whose ``where`` has subqueries (protocol doc §3.2, §3.3, §14):
``tags`` holds one string per OR-branch of the clause, ``/``-separated, one slot per condition
(empty: not in that branch; ``"1"``: a plain condition; else a hash of the value the condition
looked up), and ``active_conditions`` one boolean per condition. A row is visible while some
branch has all its conditions active. A ``move-out`` event names (position, hash) patterns whose
condition became false; a ``move-in`` those that became true again.

Two tables per synced table ``T``, made on first use and never seen by a reader's ``SELECT *``
on ``T``: ``_replica_tags_T`` (per key: the row's identity columns, its branches' positions and
its active conditions) and ``_replica_slots_T`` (per key: its (position, hash) pairs, indexed by
pattern). ``Tagger.rows`` reads changes and moves in log order, keeps both tables in step, and
yields what the table writer must do: the changes themselves, and a delete for each row a
move-out leaves with no satisfied branch. Everything is written in the caller's transaction, with
the rows (R1). Used only by ``replica.store``, inside its transactions and apsw-error boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apsw

from replica.errors import ProtocolError
from replica.protocol import wire
from replica.protocol.messages import Change, Move, header_list
from replica.typemap.schema import TableSchema, quote_ident

__all__ = ["Tagger", "drop", "replace", "tables_of"]

Row = tuple[str, str, Mapping[str, str | None]]


def tables_of(table: str) -> tuple[str, str]:
    """The names of ``table``'s tag tables: (per key, per slot)."""
    return "_replica_tags_" + table, "_replica_slots_" + table


def _exists(conn: apsw.Connection, table: str) -> bool:
    row = conn.execute("SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?", (tables_of(table)[0],))
    return row.fetchone() is not None


def _create(conn: apsw.Connection, table: str) -> None:
    keys, slots = (quote_ident(t) for t in tables_of(table))
    conn.execute(f'CREATE TABLE IF NOT EXISTS main.{keys} ("key" TEXT PRIMARY KEY, "ident" TEXT NOT NULL, '
                 '"branches" TEXT NOT NULL, "active" TEXT) WITHOUT ROWID')
    # The primary key finds a move's rows by pattern; the index a row's own slots.
    conn.execute(f'CREATE TABLE IF NOT EXISTS main.{slots} ("pos" INTEGER NOT NULL, "value" TEXT NOT NULL, '
                 '"key" TEXT NOT NULL, PRIMARY KEY ("pos", "value", "key")) WITHOUT ROWID')
    conn.execute(f'CREATE INDEX IF NOT EXISTS main.{quote_ident(tables_of(table)[1] + "_key")} ON {slots} ("key")')


def drop(conn: apsw.Connection, table: str) -> None:
    if _exists(conn, table):
        for name in tables_of(table):
            conn.execute(f"DROP TABLE IF EXISTS main.{quote_ident(name)}")


def replace(conn: apsw.Connection, source: str, target: str) -> None:
    """``target``'s tags become ``source``'s (a staged snapshot published), ``source``'s are gone.

    Copied rather than renamed, so every tag table keeps the layout ``_create`` gives it."""
    drop(conn, target)
    if not _exists(conn, source):
        return
    _create(conn, target)
    for new, old in zip(tables_of(target), tables_of(source), strict=True):
        conn.execute(f"INSERT INTO main.{quote_ident(new)} SELECT * FROM main.{quote_ident(old)}")
    drop(conn, source)


class Tagger:
    """Keeps ``table``'s tags in step with the changes and moves written to it, in log order."""

    def __init__(self, conn: apsw.Connection, table: str, schema: TableSchema) -> None:
        _create(conn, table)
        self._conn = conn
        keys, slots = (quote_ident(t) for t in tables_of(table))
        self._keys, self._slots = f"main.{keys}", f"main.{slots}"
        self._ident = schema.pk  # what a synthetic delete must carry to find the row

    def rows(self, items: Iterable[Change | Move]) -> Iterator[Row]:
        """The writes ``items`` make to the table, in order: changes as they are, move-outs as deletes."""
        for item in items:
            if isinstance(item, Move):
                if item.event == "move-out":
                    yield from self._move_out(item.patterns)
                else:
                    self._move_in(item.patterns)
            else:
                self._track(item)
                yield item.operation, item.key, item.value

    # --- changes ---

    def _track(self, change: Change) -> None:
        key = change.key
        if change.operation == wire.DELETE:
            self._forget(key)
            return
        headers = change.headers
        tags = _strings(header_list(headers, "tags"), "tags")
        removed = _strings(header_list(headers, "removed_tags"), "removed_tags")
        active = header_list(headers, "active_conditions")
        if active is not None and any(type(a) is not bool for a in active):
            raise ProtocolError(f"active_conditions must be booleans, got {active!r}")
        known = self._load(key)
        current = self._slots_of(key) if known else set()
        updated = (current - _slots(removed)) | _slots(tags)
        if not updated:  # nothing ties the row to a condition: no move can take it out
            self._forget(key)
            return
        ident = dict(known[0]) if known else {}
        ident.update((c, change.value[c]) for c in self._ident if c in change.value)
        branches = _branches(tags) if tags else (known[1] if known else [])
        if not active:  # absent: what the row had (a change that moved no condition)
            active = known[2] if known else None
        for pos, value in current - updated:
            self._conn.execute(f'DELETE FROM {self._slots} WHERE "pos" = ? AND "value" = ? AND "key" = ?',
                               (pos, value, key))
        self._conn.executemany(f'INSERT OR IGNORE INTO {self._slots} ("pos", "value", "key") VALUES (?, ?, ?)',
                               [(pos, value, key) for pos, value in updated - current])
        self._conn.execute(
            f'INSERT OR REPLACE INTO {self._keys} ("key", "ident", "branches", "active") VALUES (?, ?, ?, ?)',
            (key, _dump(ident), _dump(branches), None if active is None else _dump(active)),
        )

    # --- moves ---

    def _move_out(self, patterns: Iterable[tuple[int, str]]) -> Iterator[Row]:
        matched = self._matching(patterns)
        for key, hits in matched.items():
            known = self._load(key)
            if known is None:
                continue
            ident, branches, active = known
            if active is not None and branches:
                # Branch mode: the conditions at these positions are false now; the slots stay, so
                # a move-in of the same value makes them true again.
                off = {pos for pos, _ in hits}
                active = [False if i in off else bool(a) for i, a in enumerate(active)]
                if _visible(branches, active):
                    self._conn.execute(f'UPDATE {self._keys} SET "active" = ? WHERE "key" = ?', (_dump(active), key))
                    continue
            else:  # no active_conditions: the row stays while any tag is left (Electric before 1.6)
                for pos, value in hits:
                    self._conn.execute(f'DELETE FROM {self._slots} WHERE "pos" = ? AND "value" = ? AND "key" = ?',
                                       (pos, value, key))
                if self._slots_of(key):
                    continue
            self._forget(key)
            yield wire.DELETE, key, ident

    def _move_in(self, patterns: Iterable[tuple[int, str]]) -> None:
        for key, hits in self._matching(patterns).items():
            known = self._load(key)
            if known is None or known[2] is None:
                continue
            active = list(known[2])
            for pos, _ in hits:
                if pos < len(active):
                    active[pos] = True
            self._conn.execute(f'UPDATE {self._keys} SET "active" = ? WHERE "key" = ?', (_dump(active), key))

    def _matching(self, patterns: Iterable[tuple[int, str]]) -> dict[str, set[tuple[int, str]]]:
        """Each key that holds any of ``patterns``, with the patterns it holds (keys in a stable order)."""
        matched: dict[str, set[tuple[int, str]]] = {}
        for pos, value in patterns:
            for (key,) in self._conn.execute(
                f'SELECT "key" FROM {self._slots} WHERE "pos" = ? AND "value" = ? ORDER BY "key"', (pos, value)
            ):
                matched.setdefault(str(key), set()).add((pos, value))
        return matched

    # --- the tables ---

    def _load(self, key: str) -> tuple[dict[str, Any], list[list[int]], list[bool] | None] | None:
        row = self._conn.execute(f'SELECT "ident", "branches", "active" FROM {self._keys} WHERE "key" = ?',
                                 (key,)).fetchone()
        if row is None:
            return None
        ident, branches, active = row
        return json.loads(str(ident)), json.loads(str(branches)), None if active is None else json.loads(str(active))

    def _slots_of(self, key: str) -> set[tuple[int, str]]:
        return {(int(pos), str(value)) for pos, value in self._conn.execute(
            f'SELECT "pos", "value" FROM {self._slots} WHERE "key" = ?', (key,))}

    def _forget(self, key: str) -> None:
        self._conn.execute(f'DELETE FROM {self._slots} WHERE "key" = ?', (key,))
        self._conn.execute(f'DELETE FROM {self._keys} WHERE "key" = ?', (key,))


def _strings(tags: list[Any] | None, name: str) -> list[str]:
    if tags is None:
        return []
    if any(not isinstance(t, str) for t in tags):
        raise ProtocolError(f"{name} must be strings, got {tags!r}")
    return tags


def _slots(tags: list[str]) -> set[tuple[int, str]]:
    """The (position, value) pairs of wire tags: one string per branch, one ``/`` slot per condition."""
    return {(pos, value) for tag in tags for pos, value in enumerate(tag.split("/")) if value}


def _branches(tags: list[str]) -> list[list[int]]:
    """Each branch's positions: those with a slot in its tag."""
    return [[pos for pos, value in enumerate(tag.split("/")) if value] for tag in tags]


def _visible(branches: list[list[int]], active: list[bool]) -> bool:
    return any(all(pos < len(active) and active[pos] for pos in branch) for branch in branches)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
