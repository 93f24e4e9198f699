"""``Shape``: what to sync — a table, optionally filtered and projected — and how it is stored locally."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from replica.errors import ConfigError
from replica.protocol import wire
from replica.typemap.schema import OVERRIDES

__all__ = ["DEFAULT_GROUP", "Shape"]

DEFAULT_GROUP = "default"  # every shape of a Replica is in one consistency group (up to 32: sync/group.py)


Pairs = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True, init=False)
class Shape:
    """What to sync: a table, optionally filtered (``where`` + ``params``) and projected (``columns``).

    ``name`` is the local SQLite table; by default the table part of ``table`` (no schema, no
    quotes). ``types`` overrides how columns are stored: ``{"price": "real"}`` stores a numeric as
    a float (lossy), ``"text"`` keeps any column's value exactly as sent. ``params`` and ``types``
    may be given as mappings; they are kept as sorted tuples, so a Shape is hashable.
    ``group``: the consistency group (R11) — shapes of one Replica with the same group are only
    ever visible at one common Postgres LSN (the default group holds at most 32 shapes: past that,
    they publish on their own); ``None`` lets this shape publish on its own. ``live``:
    how live changes arrive, ``"long-poll"`` or ``"sse"`` (one held Server-Sent Events stream,
    falling back to long-polls where streams fail); None takes the ``Replica``'s ``live``.
    Neither ``types`` nor ``live`` is part of the server-side definition. ``writable``: the local
    table becomes a view the app may write with plain SQL; its changes are uploaded (design.md §3j).
    """

    table: str
    where: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    columns: tuple[str, ...] | None = None
    replica: str = wire.REPLICA_DEFAULT
    name: str | None = None
    types: tuple[tuple[str, str], ...] = ()
    group: str | None = DEFAULT_GROUP
    live: str | None = None
    writable: bool = False

    def __init__(
        self,
        table: str,
        where: str | None = None,
        params: Pairs = (),
        columns: Iterable[str] | None = None,
        replica: str = wire.REPLICA_DEFAULT,
        name: str | None = None,
        types: Pairs = (),
        group: str | None = DEFAULT_GROUP,
        live: str | None = None,
        writable: bool = False,
    ) -> None:
        set_ = object.__setattr__  # frozen
        set_(self, "table", table)
        set_(self, "where", where)
        set_(self, "params", _pairs(params))
        set_(self, "columns", None if columns is None else tuple(columns))
        set_(self, "replica", replica)
        set_(self, "name", name)
        set_(self, "types", tuple(sorted(_pairs(types))))
        set_(self, "group", group)
        set_(self, "live", live)
        set_(self, "writable", writable)
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
        if self.columns is not None and not self.columns:
            raise ConfigError("columns: must list at least one column (and every primary-key column)")
        for column, kind in self.types:
            if kind not in OVERRIDES:
                raise ConfigError(f"types.{column}: must be one of {sorted(OVERRIDES)}, got {kind!r}")
        if self.live is not None and self.live not in wire.LIVE_MODES:
            raise ConfigError(f"live: must be one of {', '.join(wire.LIVE_MODES)}, got {self.live!r}")
        if not self.local_name:
            raise ConfigError("name: the local table name must not be empty")
        if not isinstance(self.writable, bool):
            raise ConfigError(f"writable: must be true or false, got {self.writable!r}")
        if self.writable and self.subquery:
            raise ConfigError("writable: a shape with a subquery cannot be writable (its rows move in and out)")
        if self.group is not None and (not isinstance(self.group, str) or not self.group.strip()):
            raise ConfigError(f"group: a consistency group is a non-empty name, or None; got {self.group!r}")

    @property
    def local_name(self) -> str:
        return self.name if self.name is not None else wire.parse_table(self.table)[1]

    @property
    def subquery(self) -> bool:
        """True if ``where`` has a subquery (``IN (SELECT …)``): its rows carry tags and move in and out."""
        return self.where is not None and _has_subquery(self.where)

    @property
    def overrides(self) -> dict[str, str]:
        """``types`` as a dict: column → "real" | "text"."""
        return dict(self.types)

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
        """Canonical text of the server-side definition; a checkpoint is only valid for it (R8).

        ``types`` and ``live`` are local (how values are stored, how changes arrive), not part of it.
        ``writable`` is (only when True, so older checkpoints stay valid): the rows are stored in
        another table then, so turning it on or off fetches the snapshot again.
        """
        schema, table = wire.parse_table(self.table)
        text: dict[str, Any] = {
            "table": [schema, table],
            "where": self.where,
            "params": dict(sorted(self.params, key=lambda kv: int(kv[0]))),
            "columns": list(self.columns) if self.columns is not None else None,
            "replica": self.replica,
        }
        if self.writable:
            text["writable"] = True
        return json.dumps(
            text,
            sort_keys=True,
            separators=(",", ":"),
        )


def _pairs(value: Pairs) -> tuple[tuple[str, str], ...]:
    items: Iterable[tuple[Any, Any]] = value.items() if isinstance(value, Mapping) else value
    return tuple((str(k), str(v)) for k, v in items)


def _has_subquery(where: str) -> bool:
    # A rough but safe test: SELECT as a word outside string literals.
    return "select" in _outside_literals(where).lower().replace("(", " ").split()


def subquery_tables(where: str | None) -> tuple[str, ...]:
    """The tables a where's subqueries read, each once, as written: what moves a subquery shape's rows
    in and out (``replica status`` shows them). ``()`` for a plain where."""
    if where is None or not _has_subquery(where):
        return ()
    found = (re.sub(r"\s*\.\s*", ".", name) for name in _FROM.findall(_outside_literals(where)))
    return tuple(dict.fromkeys(found))


_NAME = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_FROM = re.compile(rf"\bfrom\s+({_NAME}(?:\s*\.\s*{_NAME})?)", re.IGNORECASE)


def _outside_literals(where: str) -> str:
    # '' inside a literal splits into an empty part: the parity of the parts still tells inside from out.
    return " ".join(part for i, part in enumerate(where.split("'")) if i % 2 == 0)
