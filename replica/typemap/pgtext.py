"""SQLite values (as a local write's JSON carries them) → Postgres text input: the type map backwards.

A writable shape's outbox sends values as the local table stores them (design.md §3j): a bool as
1/0, an array as its JSON text, a bytea as ``\\x…``, ±inf as ``Infinity``. A write endpoint that
inserts through Postgres' text input (the dev servers do) turns each back with ``to_pg_text``,
given the column's Postgres type and dims from electric-schema. Pure.
"""

from __future__ import annotations

import json
from typing import Any

from replica.typemap.values import BOOL_TYPES, JSON_TYPES

__all__ = ["to_pg_text"]


def to_pg_text(value: Any, pg_type: str, dims: int = 0) -> str | None:
    """The Postgres input text for ``value`` in a column of ``pg_type`` (``dims`` ≥ 1: an array)."""
    if value is None:
        return None
    if dims:
        items = json.loads(value) if isinstance(value, str) and value.lstrip().startswith("[") else value
        if isinstance(items, list):
            return _array(items, pg_type)
        return str(value)  # already Postgres' own array text
    return _scalar(value, pg_type)


def _scalar(value: Any, pg_type: str) -> str:
    if pg_type in BOOL_TYPES and isinstance(value, (bool, int)):
        return "t" if value else "f"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _array(items: list[Any], pg_type: str) -> str:
    parts = []
    for item in items:
        if isinstance(item, list):
            parts.append(_array(item, pg_type))
        elif item is None:
            parts.append("NULL")
        elif pg_type == "bytea" and isinstance(item, str):
            parts.append(_quote("\\x" + item))  # the type map keeps bytea elements as plain hex
        elif pg_type in JSON_TYPES and not isinstance(item, str):
            parts.append(_quote(json.dumps(item, separators=(",", ":"))))
        else:
            parts.append(_quote(_scalar(item, pg_type)))
    return "{" + ",".join(parts) + "}"


def _quote(text: str) -> str:
    """An array element as Postgres prints it: quoted only when it must be (array_out's rule)."""
    if text and text.upper() != "NULL" and not any(ch in _SPECIAL or ch.isspace() for ch in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_SPECIAL = frozenset('{},"\\')
