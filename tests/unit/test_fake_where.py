"""The where-clause evaluator: Postgres semantics for the supported subset."""

from __future__ import annotations

import pytest

from replica.testing.fake.where import WhereError, column_kind, compile_where

COLUMNS = {
    "id": column_kind("int8"),
    "price": column_kind("numeric"),
    "title": column_kind("text"),
    "done": column_kind("bool"),
    "Mixed": column_kind("text"),
    "tags": column_kind("text", 1),
}
ROWS = [
    {"id": "9", "price": "10.50", "title": "it's", "done": "t", "Mixed": "M", "tags": "{a}"},
    {"id": "10", "price": "NaN", "title": "b", "done": "f", "Mixed": None, "tags": None},
    {"id": "-3", "price": None, "title": None, "done": None, "Mixed": "x", "tags": "{}"},
]


def ids(where: str, *params: str) -> list[str]:
    predicate = compile_where(where, params, COLUMNS)
    return [row["id"] for row in ROWS if predicate(row)]  # type: ignore[misc]


@pytest.mark.parametrize(
    ("where", "params", "expected"),
    [
        ("id < 10", (), ["9", "-3"]),  # numeric, not text, comparison
        ("title < 'c'", (), ["10"]),  # NULL never matches; text order
        ("id >= -3 AND id <> 10", (), ["9", "-3"]),
        ("id != 9", (), ["10", "-3"]),
        ("price > 10.4", (), ["9", "10"]),  # NaN sorts above every number
        ("price = 'NaN'", (), ["10"]),
        ("title = 'it''s'", (), ["9"]),
        ("done", (), ["9"]),
        ("NOT done", (), ["10"]),  # NOT NULL is NULL
        ("done = false OR done IS NULL", (), ["10", "-3"]),
        ("done = $1", ("true",), ["9"]),
        ("done = 't'", (), ["9"]),
        ("id IN (1, 9, 10)", (), ["9", "10"]),
        ("id NOT IN (9, NULL)", (), []),  # x NOT IN (…, NULL) is never TRUE
        ("id IN ($1, $2)", ("10", "-3"), ["10", "-3"]),
        ("title IS NULL", (), ["-3"]),
        ("title IS NOT NULL AND (id = 9 OR id = 10)", (), ["9", "10"]),
        ('"Mixed" = \'M\'', (), ["9"]),
        ("ID = 9", (), ["9"]),  # unquoted identifiers fold to lower case
        ("title = $1", ("'; DROP TABLE items; --",), []),
        ("title LIKE 'i%'", (), ["9"]),
        ("title NOT LIKE '_'", (), ["9"]),
        ("NOT (id = 9 AND TRUE) AND id > $1", ("0",), ["10"]),
        ("tags = '{}'", (), ["-3"]),
        ("id > 1 OR NULL", (), ["9", "10"]),
        ("(id = 9) = true", (), ["9"]),
    ],
)
def test_evaluation(where: str, params: tuple[str, ...], expected: list[str]) -> None:
    assert ids(where, *params) == expected


@pytest.mark.parametrize(
    ("where", "params", "message"),
    [
        ("id = ", (), "syntax error"),
        ("id = 1 1", (), "syntax error"),
        ("(id = 1", (), "syntax error"),
        ("nope = 1", (), "unknown reference nope"),
        ('"ID" = 1', (), "unknown reference ID"),
        ("id", (), "must return a boolean"),
        ("title = 1", (), "operator does not exist"),
        ("id = 'x'", (), "invalid input syntax"),
        ("id = $1", ("x",), "invalid input syntax"),
        ("id = $2", ("1",), "parameter $2 was not provided"),
        ("id IN (SELECT id FROM t)", (), "SELECT"),
        ("title AND done", (), "must be type boolean"),
        ("id = 1; DROP", (), "syntax error"),
    ],
)
def test_errors(where: str, params: tuple[str, ...], message: str) -> None:
    with pytest.raises(WhereError, match=message.replace("$", r"\$").replace("(", r"\(")):
        compile_where(where, params, COLUMNS)
