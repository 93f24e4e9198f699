"""Reading the ``test_decoding`` output plugin's text: committed transactions of row changes.

``pg_logical_slot_get_changes(slot, NULL, NULL, 'include-xids', '1', 'skip-empty-xacts', '1')``
returns rows ``(lsn, xid, data)`` where ``data`` is one of::

    BEGIN 750
    table public.items: INSERT: id[integer]:1 title[text]:'it''s' done[boolean]:true
    table public.items: UPDATE: old-key: id[integer]:1 … new-tuple: id[integer]:1 …
    table public.items: DELETE: id[integer]:1 …
    table public.a, public.b: TRUNCATE: (no-flags)
    COMMIT 750

Only committed transactions are emitted, whole and in commit order. Column values are the type
output function's text (under the reading session's DateStyle, TimeZone … settings); numbers
and bools are unquoted, ``null`` is NULL, anything else is single-quoted with ``''`` doubled.
Bools are turned back into ``t``/``f``, the replication form Electric sends. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["DecodeError", "RowChange", "Transaction", "fit_rows", "parse_lsn", "read_transactions"]

Values = dict[str, str | None]

_UNQUOTED_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")
_UNCHANGED_TOAST = "unchanged-toast-datum"


class DecodeError(ValueError):
    """The plugin's output did not have the expected form."""


@dataclass
class RowChange:
    """One row change (``insert``/``update``/``delete``), a ``truncate`` of ``relations``, or a
    ``skipped`` change of a table nobody asked for.

    ``old`` is the whole old row when the table has REPLICA IDENTITY FULL (else the key or
    nothing). Unchanged TOASTed values in ``new`` are filled from ``old``; ``unknown`` names the
    ones that could not be (no old row).
    """

    operation: str
    relations: list[tuple[str, str]]
    old: Values | None = None
    new: Values | None = None
    unknown: frozenset[str] = frozenset()


@dataclass
class Transaction:
    xid: int
    lsn: int = 0  # the commit record's LSN: unique and increasing in commit order
    changes: list[RowChange] = field(default_factory=list)


def parse_lsn(text: str) -> int:
    """``16/B374D848`` → the 64-bit integer Electric puts in offsets."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def read_transactions(
    rows: Iterable[tuple[str, str | int, str]], wanted: Callable[[str, str], bool] = lambda schema, name: True
) -> list[Transaction]:
    """Group the plugin's rows into committed transactions. Changes of tables that are not
    ``wanted`` come as unparsed ``skipped`` changes (a TRUNCATE naming any wanted table is kept)."""
    done: list[Transaction] = []
    current: Transaction | None = None
    for lsn, xid, data in rows:
        if data.startswith("BEGIN"):
            current = Transaction(int(xid))
        elif data.startswith("COMMIT"):
            if current is None:
                raise DecodeError(f"COMMIT without BEGIN at {lsn}")
            current.lsn = parse_lsn(lsn)
            done.append(current)
            current = None
        elif data.startswith("table "):
            if current is None:
                raise DecodeError(f"change outside a transaction at {lsn}: {data[:80]!r}")
            current.changes.append(parse_change(data, wanted))
        # other messages (e.g. pg_logical_emit_message output) carry no row changes
    return done


def parse_change(data: str, wanted: Callable[[str, str], bool]) -> RowChange:
    reader = _Reader(data, len("table "))
    relations = [reader.relation()]
    while reader.take(", "):
        relations.append(reader.relation())
    reader.expect(": ")
    end = data.index(":", reader.pos)
    operation = data[reader.pos : end].lower()
    reader.pos = end + 1
    if not any(wanted(*relation) for relation in relations):
        # Kept, unparsed: it still takes its place in the transaction (op positions count it).
        return RowChange("skipped", relations)
    if operation == "truncate":
        return RowChange("truncate", relations)
    if operation not in ("insert", "update", "delete"):
        raise DecodeError(f"unknown operation {operation!r} in {data[:80]!r}")
    old: Values | None = None
    new: Values | None = None
    reader.take(" ")
    if operation == "update" and reader.take("old-key:"):
        reader.take(" ")
        old, _ = reader.tuple()
        reader.expect("new-tuple:")
        reader.take(" ")
    values: Values | None = None
    unchanged: set[str] = set()
    if not reader.take("(no-tuple-data)"):
        values, unchanged = reader.tuple()
    if operation == "delete":
        old = values
    else:
        new = values
    unknown: set[str] = set()
    for column in unchanged:
        assert new is not None
        if old is not None and column in old:
            new[column] = old[column]
        else:
            unknown.add(column)
    return RowChange(operation, relations, old, new, frozenset(unknown))


class _Reader:
    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos

    def take(self, literal: str) -> bool:
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def expect(self, literal: str) -> None:
        if not self.take(literal):
            raise DecodeError(f"expected {literal!r} at {self.pos} in {self.text[:120]!r}")

    def ident(self) -> str:
        # quote_identifier(): bare when lower-case safe, else "…" with "" doubled.
        if self.take('"'):
            return self.quoted('"', "identifier")
        match = _UNQUOTED_IDENT.match(self.text, self.pos)
        if match is None:
            raise DecodeError(f"expected an identifier at {self.pos} in {self.text[:120]!r}")
        self.pos = match.end()
        return match.group(0)

    def quoted(self, quote: str, what: str) -> str:
        """The rest of a quoted token (the opening quote is taken); a doubled quote stands for one."""
        out = []
        while True:
            end = self.text.find(quote, self.pos)
            if end < 0:
                raise DecodeError(f"unterminated {what} in {self.text[:120]!r}")
            out.append(self.text[self.pos : end])
            self.pos = end + 1
            if not self.take(quote):
                return "".join(out)
            out.append(quote)

    def relation(self) -> tuple[str, str]:
        schema = self.ident()
        self.expect(".")
        return schema, self.ident()

    def tuple(self) -> tuple[Values, set[str]]:
        """``name[type]:value`` items up to the end or the next ``new-tuple:`` marker."""
        values: Values = {}
        unchanged: set[str] = set()
        while self.pos < len(self.text) and not self.text.startswith("new-tuple:", self.pos):
            name = self.ident()
            self.expect("[")
            end = self.text.find("]:", self.pos)  # type names may end in [] (arrays), never in ]:
            if end < 0:
                raise DecodeError(f"expected a [type] at {self.pos} in {self.text[:120]!r}")
            type_name = self.text[self.pos : end]
            self.pos = end + 2
            if self.take(_UNCHANGED_TOAST):  # unquoted, so never a value of a quoted type
                unchanged.add(name)
            else:
                value = self.value()
                if type_name == "boolean" and value is not None:
                    value = "t" if value == "true" else "f"
                values[name] = value
            self.take(" ")
        return values, unchanged

    def value(self) -> str | None:
        if self.take("'") or self.take("B'"):  # B'0101' for bit and varbit
            return self.quoted("'", "literal")
        end = self.text.find(" ", self.pos)
        end = len(self.text) if end < 0 else end
        token = self.text[self.pos : end]
        self.pos = end
        return None if token == "null" else token


def fit_rows(change: RowChange, names: Iterable[str]) -> tuple[Values | None, Values | None] | None:
    """(old, new) as full rows of a table with columns ``names``, or None when the change does not fit them."""
    names = list(names)
    columns = set(names)
    if change.unknown or (change.new is not None and set(change.new) != columns):
        return None
    old = change.old
    if old is not None:
        if not set(old) <= columns:
            return None
        # test_decoding leaves NULLs out of old rows; with REPLICA IDENTITY FULL (set before the
        # shape's snapshot, so in force for every change it takes) a missing column is a NULL.
        old = {c: old.get(c) for c in names}
    elif change.operation in ("update", "delete"):
        return None  # no old row at all: not written under REPLICA IDENTITY FULL
    return old, change.new
