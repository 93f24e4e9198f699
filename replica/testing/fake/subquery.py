"""Subquery shapes in the fake: a ``where`` split into conditions, each row's tags, and the moves.

Electric (protocol doc §3.2-3.3, §14) rewrites a subquery shape's clause as OR-branches of ANDed
conditions (disjunctive normal form, NOT pushed down to the conditions). Each row carries ``tags``,
one string per branch with one ``/`` slot per condition (empty: not in the branch; ``"1"``: a
plain condition; else a hash of the value the subquery looks up, ``"NULL"`` for null), and
``active_conditions``, each condition's truth. Here a *condition* is a maximal subtree without a
subquery (plain) or one ``[NOT] IN (SELECT …)``; conditions are numbered left to right.

``Moves`` keeps, per shape log, what a client following it holds (each row's tags and active
conditions, updated exactly as the client's rules say) and, at each transaction, writes what
Electric would: the root table's changes with their tags, then a ``move-out`` of every (position,
value) whose condition became false, a ``move-in`` of those that became true, the rows that are in
the shape now but not at the client as ``is_move_in`` inserts, and a ``snapshot-end``. The oracle
(``FakeElectric.rows``) evaluates the clause itself, so the model test compares the two.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from replica.protocol import wire
from replica.testing.fake.tables import Row, Table
from replica.testing.fake.where import Tables, _Column, _Node, _Op, _Row, _Sub, compile_node, parse_where

__all__ = ["Condition", "Held", "Split", "has_subquery", "row_tag_value", "split_where", "tag_value"]


@dataclass(frozen=True)
class Condition:
    """One condition: ``truth(row)`` (True, False or None) and, for a subquery, the column it looks up."""

    truth: Callable[[Row], Any]
    needle: str | tuple[str, ...] | None  # the outer column(s) a subquery compares; None for a plain condition


@dataclass(frozen=True)
class Split:
    """A clause as conditions and branches (each branch: the positions it ANDs)."""

    conditions: tuple[Condition, ...]
    branches: tuple[tuple[int, ...], ...]

    def active(self, row: Row) -> list[bool]:
        return [c.truth(row) is True for c in self.conditions]

    def visible(self, active: Sequence[bool]) -> bool:
        return any(all(active[p] for p in branch) for branch in self.branches)

    def tags(self, row: Row, handle: str) -> list[str]:
        slots = [_slot(c, row, handle) for c in self.conditions]
        return ["/".join(slots[p] if p in branch else "" for p in range(len(slots))) for branch in self.branches]


def _slot(condition: Condition, row: Row, handle: str) -> str:
    if condition.needle is None:
        return "1"
    if isinstance(condition.needle, tuple):
        return row_tag_value(handle, [(column, row[column]) for column in condition.needle])
    return tag_value(handle, row[condition.needle])


def tag_value(handle: str, value: str | None) -> str:
    """A subquery slot: a hash of the shape and the looked-up value (Electric: md5 of stack, handle, value)."""
    return "NULL" if value is None else hashlib.md5(f"{handle}v:{value}".encode()).hexdigest()  # a tag


def row_tag_value(handle: str, values: Sequence[tuple[str, str | None]]) -> str:
    """A row-valued subquery's slot (``(a, b) IN (SELECT …)``): Electric hashes the columns together,
    each as ``column:`` then ``v:value`` or ``NULL``; never the bare ``"NULL"``."""
    text = "".join(f"{column}:" + ("NULL" if value is None else f"v:{value}") for column, value in values)
    return hashlib.md5(f"{handle}{text}".encode()).hexdigest()  # a tag


def has_subquery(where: str | None) -> bool:
    if where is None:
        return False
    outside = "".join(part for i, part in enumerate(where.split("'")) if i % 2 == 0)
    return "select" in outside.lower().replace("(", " ").split()


def split_where(text: str, params: Sequence[str], columns: Mapping[str, str], tables: Tables) -> Split:
    """``text`` as conditions and branches (WhereError as for ``compile_where``)."""
    tree = parse_where(text, params, columns, tables)
    conditions: list[Condition] = []
    seen: dict[tuple[int, bool], int] = {}

    def position(node: _Node, negated: bool) -> int:
        known = seen.get((id(node), negated))
        if known is not None:
            return known
        inner = _Op("bool", "not", [node]) if negated else node
        needle = None
        if isinstance(node, _Sub) and isinstance(node.needle, _Row):
            needle = tuple(item.name for item in node.needle.items)
        elif isinstance(node, _Sub):
            if not isinstance(node.needle, _Column):
                raise ValueError("a subquery shape's IN must compare a column")
            needle = node.needle.name
        conditions.append(Condition(compile_node(inner), needle))
        seen[(id(node), negated)] = len(conditions) - 1
        return len(conditions) - 1

    def dnf(node: _Node, negated: bool) -> list[tuple[int, ...]]:
        if isinstance(node, _Op) and node.op == "not":
            return dnf(node.args[0], not negated)
        if isinstance(node, _Op) and node.op in ("and", "or") and _has_sub(node):
            left, right = (dnf(arg, negated) for arg in node.args)
            if (node.op == "or") != negated:  # OR, or NOT over AND
                return left + right
            return [tuple(sorted(set(a) | set(b))) for a, b in itertools.product(left, right)]
        return [(position(node, negated),)]

    branches = dnf(tree, False)
    return Split(tuple(conditions), tuple(dict.fromkeys(branches)))


def _has_sub(node: _Node) -> bool:
    if isinstance(node, _Sub):
        return True
    return isinstance(node, _Op) and any(_has_sub(arg) for arg in node.args)


@dataclass
class Held:
    """What a client holds of one row: its slots, active conditions and branches (the client's rules)."""

    tags: list[str]
    slots: set[tuple[int, str]]
    active: list[bool]
    branches: tuple[tuple[int, ...], ...]


@dataclass
class Moves:
    """One subquery shape log's view of its clients (see the module docstring)."""

    split: Split
    handle: str
    held: dict[str, Held] = field(default_factory=dict)

    def headers(self, row: Row) -> dict[str, Any]:
        return {"tags": self.split.tags(row, self.handle), "active_conditions": self.split.active(row)}

    def hold(self, key: str, row: Row) -> None:
        tags = self.split.tags(row, self.handle)
        slots = {(p, v) for tag in tags for p, v in enumerate(tag.split("/")) if v}
        self.held[key] = Held(tags, slots, self.split.active(row), self.split.branches)

    def change(self, table: Table, old: Row | None, new: Row | None, full: bool,
               columns: Sequence[str]) -> list[dict[str, Any]]:
        """The messages one change of a root row makes (headers without lsn/op/txids), as for a
        plain shape but judged by what the client holds, with tags (``removed_tags`` on updates)."""
        was = old is not None and table.key(old) in self.held
        now = self.in_shape(new)
        messages: list[dict[str, Any]] = []
        if was and (not now or table.key(old) != table.key(new)):  # type: ignore[arg-type]
            assert old is not None
            value = {c: old[c] for c in columns} if full else {c: old[c] for c in table.pk if c in columns}
            messages.append({"key": table.key(old), "value": value, "headers": {"operation": wire.DELETE}})
            del self.held[table.key(old)]
            was = False
        if not now:
            return messages
        assert new is not None
        key = table.key(new)
        if not was:
            messages.append({"key": key, "value": {c: new[c] for c in columns},
                             "headers": {"operation": wire.INSERT, **self.headers(new)}})
            self.hold(key, new)
            return messages
        assert old is not None
        before = self.held[key]
        headers = {"operation": wire.UPDATE, **self.headers(new)}
        changed = [c for c in columns if old[c] != new[c]]
        if not changed and headers["tags"] == before.tags and headers["active_conditions"] == before.active:
            return messages
        removed = [t for t in before.tags if t not in headers["tags"]]
        if removed:
            headers["removed_tags"] = removed
        keep = set(table.pk) | set(changed)
        value = {c: new[c] for c in columns if full or c in keep}
        if full:
            messages.append({"key": key, "value": value, "old_value": {c: old[c] for c in changed}, "headers": headers})
        else:
            messages.append({"key": key, "value": value, "headers": headers})
        self.hold(key, new)
        return messages

    def in_shape(self, row: Row | None) -> bool:
        return row is not None and self.split.visible(self.split.active(row))

    def moves(
        self, table: Table, rows: Iterable[Row], project: Callable[[Row], dict[str, str | None]]
    ) -> list[dict[str, Any]]:
        """After a transaction: the move events, the moved-in rows and their snapshot-end, as messages."""
        flips: dict[bool, set[tuple[int, str]]] = {True: set(), False: set()}
        current = {table.key(row): row for row in rows}
        for key, held in self.held.items():
            row = current.get(key)
            if row is None:
                continue
            now = self.split.active(row)
            for pos, value in held.slots:
                if self.split.conditions[pos].needle is not None and now[pos] != held.active[pos]:
                    flips[now[pos]].add((pos, value))
        messages: list[dict[str, Any]] = []
        if flips[False]:
            messages.append(_event("move-out", flips[False]))
            for key, held in list(self.held.items()):
                hits = {pos for pos, value in held.slots if (pos, value) in flips[False]}
                if hits:
                    held.active = [False if i in hits else a for i, a in enumerate(held.active)]
                    if not any(all(held.active[p] for p in b) for b in held.branches):
                        del self.held[key]
        if flips[True]:
            messages.append(_event("move-in", flips[True]))
            for held in self.held.values():
                for pos, value in held.slots:
                    if (pos, value) in flips[True]:
                        held.active[pos] = True
        moved_in = [row for key, row in current.items() if key not in self.held and self.in_shape(row)]
        for row in moved_in:
            headers = {"operation": wire.INSERT, "is_move_in": True, **self.headers(row)}
            messages.append({"key": table.key(row), "value": project(row), "headers": headers})
            self.hold(table.key(row), row)
        if flips[True] or moved_in:
            messages.append({"headers": {"control": wire.SNAPSHOT_END}})  # xmin/xmax filled by the caller
        return messages


def _event(name: str, patterns: set[tuple[int, str]]) -> dict[str, Any]:
    ordered = sorted(patterns)
    return {"headers": {"event": name, "patterns": [{"pos": p, "value": v} for p, v in ordered]}}
