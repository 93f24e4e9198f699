"""The SQL operators of the fake's where evaluator, in three-valued logic (NULL is ``None``).

Each takes closures ``row -> value`` and returns one; ``where.py`` parses, types and compiles.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from replica.testing.fake.tables import Row

__all__ = ["compare_op", "in_list", "like_op", "logic", "member", "row_member"]

_Eval = Callable[[Row], Any]


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
