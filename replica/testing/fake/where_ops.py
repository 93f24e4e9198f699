"""The SQL operators of the fake's where evaluator, in three-valued logic (NULL is ``None``).

Each takes closures ``row -> value`` and returns one; ``where.py`` parses, types and compiles.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from replica.testing.fake.tables import NUMERIC_TYPES, Row

__all__ = ["column_kind", "compare_op", "in_list", "like_op", "logic", "member", "num_key", "row_member",
           "select_member"]

_Eval = Callable[[Row], Any]


def column_kind(pg_type: str, dims: int = 0) -> str:
    """How the evaluator compares a column of this type."""
    if dims:
        return "text"
    if pg_type in NUMERIC_TYPES:
        return "num"
    return "bool" if pg_type == "bool" else "text"


def num_key(text: str) -> tuple[int, Decimal]:
    # Postgres orders NaN above every number and equal to itself.
    if text == "NaN":
        return (1, Decimal(0))
    return (0, Decimal(text))


def select_member(needles: list[_Eval], columns: list[_Eval], rows: Callable[[], Iterable[Row]],
                  where: _Eval | None, *, negated: bool) -> _Eval:
    """``needle [NOT] IN (SELECT column …)``, or row-valued with several needles and columns."""
    if len(needles) > 1:
        def row_contains(row: Row) -> Any:
            found = [tuple(c(r) for c in columns) for r in rows() if where is None or where(r) is True]
            return row_member(tuple(n(row) for n in needles), found, negated=negated)

        return row_contains
    needle, column = needles[0], columns[0]

    def contains(row: Row) -> Any:
        return member(needle(row), [column(r) for r in rows() if where is None or where(r) is True], negated=negated)

    return contains


def member(value: Any, values: list[Any], *, negated: bool) -> Any:
    """``value [NOT] IN (values)`` of a subquery: ``x IN (empty)`` is FALSE (NOT IN TRUE) even for NULL x."""
    if not values:
        return negated
    if value is None:
        return None
    if value in values:
        return not negated
    return None if None in values else negated


def row_member(value: tuple[Any, ...], rows: list[tuple[Any, ...]], *, negated: bool) -> Any:
    """``(a, b) [NOT] IN (SELECT x, y …)``: TRUE if some row equals element by element, else NULL
    if some comparison was NULL, else FALSE (rows are compared as Postgres compares them)."""
    unknown = False
    for row in rows:
        equal: Any = True
        for a, b in zip(value, row, strict=True):
            if a is None or b is None:
                equal = None if equal is not False else False
            elif a != b:
                equal = False
        if equal is True:
            return not negated
        unknown |= equal is None
    return None if unknown else negated


def logic(op: str, parts: list[_Eval]) -> _Eval:
    if op == "not":
        (inner,) = parts

        def not_(row: Row) -> Any:
            value = inner(row)
            return None if value is None else not value

        return not_
    left, right = parts
    decisive = op == "or"  # TRUE decides OR, FALSE decides AND

    def junction(row: Row) -> Any:
        a, b = left(row), right(row)
        if a is decisive or b is decisive:
            return decisive
        if a is None or b is None:
            return None
        return not decisive

    return junction


_COMPARE = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def compare_op(op: str, left: _Eval, right: _Eval) -> _Eval:
    fn = _COMPARE[op]

    def compare(row: Row) -> Any:
        a, b = left(row), right(row)
        return None if a is None or b is None else fn(a, b)

    return compare


def in_list(needle: _Eval, items: list[_Eval], *, negated: bool) -> _Eval:
    def contains(row: Row) -> Any:
        value = needle(row)
        if value is None:
            return None
        values = [item(row) for item in items]
        if value in values:
            return not negated
        return None if None in values else negated

    return contains


def like_op(value: _Eval, pattern: _Eval, *, negated: bool) -> _Eval:
    def like(row: Row) -> Any:
        text, pat = value(row), pattern(row)
        if text is None or pat is None:
            return None
        regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pat)
        return (re.fullmatch(regex, text, re.DOTALL) is not None) != negated

    return like
