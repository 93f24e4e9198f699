"""The fake's source tables: columns (as electric-schema entries), rows, identity and keys.

Rows hold Postgres text values in a canonical form: bools are ``t``/``f`` (the replication
encoding), everything else exactly as given. ``snapshot_value`` converts to the snapshot
encoding, where Postgres' ``col::text`` turns a bool into ``true``/``false``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from replica.protocol import wire

Row = dict[str, str | None]
Identity = tuple[str | None, ...]

INTEGER_TYPES = frozenset({"int2", "int4", "int8", "oid", "xid"})
NUMERIC_TYPES = INTEGER_TYPES | frozenset({"float4", "float8", "numeric", "money"})
_BOOL_TEXT = {"t": "t", "true": "t", "f": "f", "false": "f"}
_NUMERIC_SPECIAL = frozenset({"NaN", "Infinity", "-Infinity"})
# An unquoted array element, or a quoted one (which is never a bool spelling we rewrite).
_ARRAY_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[^{},"\s]+')


def canonical_bool(text: str) -> str:
    """``t``/``f`` for any spelling Postgres prints or a test might write (t, true, f, false)."""
    try:
        return _BOOL_TEXT[text.strip().lower()]
    except KeyError:
        raise ValueError(f"invalid bool value {text!r}: use t, f, true or false") from None


def _canonical_bool_array(text: str) -> str:
    # Postgres prints bool array elements as t/f whatever the input spelling was.
    def fix(match: re.Match[str]) -> str:
        token = match.group(0)
        if token.startswith('"') or token == "NULL":
            return token
        return canonical_bool(token)

    return _ARRAY_TOKEN.sub(fix, text)


class Table:
    """One source table. Identity is the PK (in ``pk_index`` order), or every column sorted by name."""

    def __init__(self, schema: str, name: str, columns: Mapping[str, Mapping[str, Any]]) -> None:
        if not columns:
            raise ValueError(f"table {name!r} needs at least one column")
        self.schema = schema
        self.name = name
        self.columns: dict[str, dict[str, Any]] = {}
        for column, spec in columns.items():
            self._check_spec(column, spec)
            self.columns[column] = copy.deepcopy(dict(spec))
        self.refresh()
        self.rows: dict[Identity, Row] = {}

    # --- definition ---

    @staticmethod
    def _check_spec(column: str, spec: Mapping[str, Any]) -> None:
        if not isinstance(column, str) or not column:
            raise ValueError(f"column names must be non-empty strings, got {column!r}")
        if not isinstance(spec.get("type"), str):
            raise ValueError(f"column {column!r}: the electric-schema entry needs a string 'type'")

    def _check_pk(self) -> None:
        indexes = sorted(spec["pk_index"] for spec in self.columns.values() if "pk_index" in spec)
        if indexes != list(range(len(indexes))):
            raise ValueError(f"table {self.name!r}: pk_index values must be 0..n-1, got {indexes}")

    def refresh(self) -> None:
        """Recompute what derives from ``columns``; call after changing them."""
        self._check_pk()
        pk = sorted((spec["pk_index"], column) for column, spec in self.columns.items() if "pk_index" in spec)
        self.has_pk = bool(pk)
        #: Identity columns: PK columns in pk_index order, or all columns sorted by name.
        self.pk: list[str] = [column for _, column in pk] if pk else sorted(self.columns)
        self._bools = {c for c in self.columns if self.type_of(c) == "bool" and not self.is_array(c)}
        self._numeric = {c for c in self.columns if self.type_of(c) in NUMERIC_TYPES and not self.is_array(c)}

    def type_of(self, column: str) -> str:
        return str(self.columns[column]["type"])

    def is_array(self, column: str) -> bool:
        return bool(self.columns[column].get("dims"))

    def is_bool(self, column: str) -> bool:
        return column in self._bools

    def is_numeric(self, column: str) -> bool:
        return column in self._numeric

    def compile_where(self, where: str, params: Sequence[str]) -> Callable[[Row], bool] | None:
        """A source's own evaluator for ``where``, or None to use the fake's (``where.py``).
        Subclasses backed by a real database override this (raising ``WhereError``)."""
        return None

    def electric_schema(self, columns: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """The electric-schema object for the selected columns (all by default), in table order."""
        selected = set(self.columns if columns is None else columns)
        return {c: copy.deepcopy(spec) for c, spec in self.columns.items() if c in selected}

    # --- values ---

    def canonical(self, column: str, value: object) -> str | None:
        """Validate one value and return its canonical stored text."""
        if column not in self.columns:
            raise KeyError(f"table {self.name!r} has no column {column!r}")
        if value is None:
            if self.columns[column].get("not_null"):
                raise ValueError(f"column {column!r} is NOT NULL")
            return None
        if not isinstance(value, str):
            raise TypeError(
                f"column {column!r}: values are Postgres text strings or None, got {type(value).__name__} "
                f"{value!r} (write {str(value)!r})"
            )
        if column in self._bools:
            return canonical_bool(value)
        if column in self._numeric:
            self._check_number(column, value)
        elif self.type_of(column) == "bool":  # a bool array
            return _canonical_bool_array(value)
        return value

    def _check_number(self, column: str, value: str) -> None:
        if self.type_of(column) in INTEGER_TYPES:
            if not re.fullmatch(r"-?\d+", value):
                raise ValueError(f"column {column!r} ({self.type_of(column)}): {value!r} is not an integer")
            return
        if value in _NUMERIC_SPECIAL:
            return
        try:
            Decimal(value)
        except InvalidOperation:
            raise ValueError(f"column {column!r} ({self.type_of(column)}): {value!r} is not a number") from None

    def full_row(self, values: Mapping[str, object]) -> Row:
        """A complete canonical row; columns not given are NULL (Postgres' default default)."""
        unknown = set(values) - set(self.columns)
        if unknown:
            raise KeyError(f"table {self.name!r} has no column(s) {sorted(unknown)}")
        return {column: self.canonical(column, values.get(column)) for column in self.columns}

    def snapshot_value(self, column: str, value: str | None) -> str | None:
        """A stored value in snapshot encoding (``col::text``): bools become true/false."""
        if value is not None and column in self._bools:
            return "true" if value == "t" else "false"
        return value

    # --- identity and keys ---

    def identity(self, row: Mapping[str, str | None]) -> Identity:
        return tuple(row[column] for column in self.pk)

    def key(self, row: Mapping[str, str | None]) -> str:
        """The Electric message key of a row (identity values in replication text form)."""
        return wire.build_key(self.schema, self.name, [row[column] for column in self.pk])

    def find(self, match: Mapping[str, object]) -> Row:
        """The row whose identity columns equal those in ``match`` (given like any value)."""
        missing = [column for column in self.pk if column not in match]
        if missing:
            what = "primary key" if self.has_pk else "every column (the table has no primary key)"
            raise KeyError(f"to find a row of {self.name!r} give its {what}; missing {missing}")
        identity = tuple(self.canonical(column, match[column]) for column in self.pk)
        try:
            return self.rows[identity]
        except KeyError:
            raise KeyError(f"no row of {self.name!r} has identity {dict(zip(self.pk, identity, strict=True))}") from None
