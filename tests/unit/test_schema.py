"""The type map (design.md §5) row by row, electric-schema parsing, and DDL with hostile names."""

from __future__ import annotations

import math
import sqlite3

import pytest

from replica.errors import ProtocolError, ShapeError
from replica.typemap.pgarray import parse_array
from replica.typemap.schema import TableSchema, create_table_sql, identity_index_sql, quote_ident


def convert(pg_type: str, text: str | None, dims: int = 0, override: str | None = None) -> object:
    spec: dict[str, object] = {"type": pg_type}
    if dims:
        spec["dims"] = dims
    overrides = {"c": override} if override else None
    return TableSchema.from_electric({"c": spec}, overrides).convert_row({"c": text})["c"]


# (type, dims, wire text, SQLite value)
TYPE_MAP = [
    ("int2", 0, "-32768", -32768),
    ("int4", 0, "2147483647", 2147483647),
    ("int8", 0, "9223372036854775807", 2**63 - 1),
    ("int8", 0, "-9223372036854775808", -(2**63)),
    ("oid", 0, "4294967295", 4294967295),
    ("float8", 0, "4.5", 4.5),
    ("float4", 0, "-1.5e-07", -1.5e-07),
    ("float8", 0, "1e+300", 1e300),
    ("float8", 0, "Infinity", math.inf),
    ("float8", 0, "-Infinity", -math.inf),
    ("float8", 0, "NaN", "NaN"),
    ("numeric", 0, "12.3400", "12.3400"),
    ("numeric", 0, "NaN", "NaN"),
    ("money", 0, "$1,000.00", "$1,000.00"),
    ("bool", 0, "t", 1),
    ("bool", 0, "true", 1),
    ("bool", 0, "f", 0),
    ("bool", 0, "false", 0),
    ("bytea", 0, "\\x0001fffe", b"\x00\x01\xff\xfe"),
    ("bytea", 0, "\\x", b""),
    ("json", 0, '{"foo" :  "bar"}', '{"foo" :  "bar"}'),
    ("jsonb", 0, '{"foo": "bar"}', '{"foo": "bar"}'),
    ("text", 0, "  any text\n", "  any text\n"),
    ("bpchar", 0, "ab   ", "ab   "),
    ("varchar", 0, "NULL", "NULL"),
    ("uuid", 0, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("interval", 0, "P1Y2M3DT4H5M6S", "P1Y2M3DT4H5M6S"),
    ("mood", 0, "happy", "happy"),
    ("timestamptz", 0, "2024-01-02 03:04:05.123+00", "2024-01-02 03:04:05.123+00:00"),
    ("timestamptz", 0, "2024-01-02 03:04:05+00", "2024-01-02 03:04:05+00:00"),
    ("timestamptz", 0, "2024-01-02 03:04:05.5+05:30", "2024-01-01 21:34:05.5+00:00"),
    ("timestamptz", 0, "2024-01-01 23:00:00-02", "2024-01-02 01:00:00+00:00"),
    ("timestamptz", 0, "0044-03-15 12:00:00+00 BC", "0044-03-15 12:00:00+00 BC"),
    ("timestamptz", 0, "infinity", "infinity"),
    ("timestamptz", 0, "-infinity", "-infinity"),
    ("timestamp", 0, "2024-01-02 03:04:05.123456", "2024-01-02 03:04:05.123456"),
    ("date", 0, "2024-01-02", "2024-01-02"),
    ("time", 0, "03:04:05.123", "03:04:05.123"),
    ("timetz", 0, "03:04:05+00", "03:04:05+00:00"),
    ("timetz", 0, "03:04:05+05:30", "03:04:05+05:30"),
    # arrays: a JSON array of converted elements
    ("int4", 1, "{1,2,3}", "[1,2,3]"),
    ("int4", 1, "{}", "[]"),
    ("int8", 1, "{9223372036854775807,NULL}", "[9223372036854775807,null]"),
    ("int4", 2, "{{1,2},{3,4}}", "[[1,2],[3,4]]"),
    ("int4", 1, "[0:1]={7,8}", "[7,8]"),
    ("float8", 1, "{1.5,NaN,Infinity,-Infinity}", '[1.5,"NaN","Infinity","-Infinity"]'),
    ("bool", 1, "{t,f,NULL}", "[true,false,null]"),
    ("bytea", 1, '{"\\\\x00ff",NULL}', '["00ff",null]'),
    ("jsonb", 1, '{"{\\"a\\": 1}","[1, 2.50]",null}', '[{"a": 1},[1, 2.50],null]'),
    (
        "text",
        1,
        '{a,"b,c","\\"q\\"","back\\\\slash","NULL",NULL,""}',
        '["a","b,c","\\"q\\"","back\\\\slash","NULL",null,""]',
    ),
    ("text", 1, '{"{braces}","ünï ✓"}', '["{braces}","ünï ✓"]'),
    ("text", 2, '{{"a b",NULL},{c,"d"}}', '[["a b",null],["c","d"]]'),
    ("numeric", 1, "{1.10,2.00}", '["1.10","2.00"]'),
    ("box", 1, "{(1,1),(0,0);(2,2),(1,1)}", '["(1,1),(0,0)","(2,2),(1,1)"]'),
    ("timestamptz", 1, '{"2024-01-02 03:04:05+00"}', '["2024-01-02 03:04:05+00:00"]'),
    ("mood", 1, "{happy,sad}", '["happy","sad"]'),
]


@pytest.mark.parametrize(("pg_type", "dims", "text", "expected"), TYPE_MAP)
def test_type_map(pg_type: str, dims: int, text: str, expected: object) -> None:
    assert convert(pg_type, text, dims) == expected
    assert type(convert(pg_type, text, dims)) is type(expected)


@pytest.mark.parametrize("pg_type", ["int4", "float8", "bool", "bytea", "text", "json", "timestamptz"])
def test_null_is_null_for_every_type(pg_type: str) -> None:
    assert convert(pg_type, None) is None
    assert convert(pg_type, None, dims=1) is None


@pytest.mark.parametrize(
    ("pg_type", "dims", "text"),
    [
        ("int4", 0, "abc"),
        ("int4", 0, "1.5"),
        ("int8", 0, "9223372036854775808"),
        ("int8", 0, "-9223372036854775809"),
        ("int4", 0, " 1"),
        ("float8", 0, "1_000"),
        ("float8", 0, "inf"),
        ("float8", 0, "nan"),
        ("bool", 0, "yes"),
        ("bytea", 0, "0001"),
        ("bytea", 0, "\\x0"),
        ("int4", 1, "{1,a}"),
        ("int4", 1, "1,2"),
        ("text", 1, "{a,,b}"),
        ("text", 1, '{"unterminated}'),
        ("text", 1, "{a}b"),
        ("jsonb", 1, "{not-json}"),
        ("jsonb", 1, "{NaN}"),
    ],
)
def test_bad_value_raises_protocol_error_naming_column_and_value(pg_type: str, dims: int, text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        convert(pg_type, text, dims)
    assert "'c'" in str(info.value)
    assert repr(text[:20])[1:-1][:5] in str(info.value)
    assert "override" in str(info.value)


def test_bad_value_message_is_truncated() -> None:
    with pytest.raises(ProtocolError) as info:
        convert("int4", "x" * 10_000)
    assert len(str(info.value)) < 400


def test_unknown_column_in_a_value_is_a_protocol_error() -> None:
    schema = TableSchema.from_electric({"id": {"type": "int4", "pk_index": 0}})
    with pytest.raises(ProtocolError, match="'other'"):
        schema.convert_row({"id": "1", "other": "x"})


def test_overrides() -> None:
    assert convert("numeric", "12.5", override="real") == 12.5
    assert convert("numeric", "NaN", override="real") == "NaN"
    assert convert("int4", "not a number", override="text") == "not a number"
    schema = TableSchema.from_electric({"p": {"type": "numeric"}}, {"p": "real"})
    assert schema.columns[0].declared_type == "REAL"
    with pytest.raises(ShapeError, match="must be one of"):
        TableSchema.from_electric({"p": {"type": "numeric"}}, {"p": "decimal"})
    with pytest.raises(ShapeError, match="not in the shape"):
        TableSchema.from_electric({"p": {"type": "numeric"}}, {"q": "real"})
    with pytest.raises(ShapeError, match="array"):
        TableSchema.from_electric({"p": {"type": "numeric", "dims": 1}}, {"p": "real"})


# --- timestamps: readable by SQLite's date functions, text order = time order ---


def test_timestamps_are_read_by_sqlite_date_functions() -> None:
    db = sqlite3.connect(":memory:")
    for pg_type, text in [
        ("timestamptz", "2024-01-02 03:04:05.123+00"),
        ("timestamptz", "2024-01-02 03:04:05.123456+00"),
        ("timestamptz", "2024-01-02 08:34:05+05:30"),
        ("timestamp", "2024-01-02 03:04:05"),
        ("date", "2024-01-02"),
        ("time", "03:04:05.5"),
        ("timetz", "03:04:05-07"),
    ]:
        value = convert(pg_type, text)
        (julian,) = db.execute("SELECT julianday(?)", (value,)).fetchone()
        assert julian is not None, (pg_type, value)


def test_timestamptz_text_sorts_in_time_order() -> None:
    wire_values = [
        "2024-01-02 01:00:00+00",
        "2024-01-02 03:00:00+05",  # 2024-01-01 22:00 UTC
        "2024-01-01 23:30:00-01",  # 2024-01-02 00:30 UTC
        "2024-01-02 00:59:59.999+00",
        "1999-12-31 23:59:59+00",
    ]
    db = sqlite3.connect(":memory:")
    stored = [str(convert("timestamptz", text)) for text in wire_values]
    by_text = sorted(stored)
    by_time = sorted(stored, key=lambda v: db.execute("SELECT julianday(?)", (v,)).fetchone()[0])
    assert by_text == by_time


# --- the array grammar itself ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", []),
        ("{{}}", [[]]),
        ('{NULL,null,"NULL"}', [None, None, "NULL"]),
        ('{ a , "b" , c d }', ["a", "b", "c d"]),
        ('{"a\\\\b\\"c"}', ['a\\b"c']),
        ("{{1,2},{3,4}}", [["1", "2"], ["3", "4"]]),
        ("[1:2][0:0]={{x},{y}}", [["x"], ["y"]]),
        ('{"",x}', ["", "x"]),
    ],
)
def test_parse_array(text: str, expected: list[object]) -> None:
    assert parse_array(text) == expected


def test_parse_array_rejects_runaway_nesting() -> None:
    with pytest.raises(ValueError, match="deeply"):
        parse_array("{" * 100 + "}" * 100)


# --- electric-schema ---


def test_from_electric_keeps_column_order_and_pk_order() -> None:
    schema = TableSchema.from_electric(
        {
            "b": {"type": "text", "pk_index": 1, "not_null": True},
            "a": {"type": "int8", "pk_index": 0, "not_null": True},
            "tags": {"type": "text", "dims": 1},
            "price": {"type": "numeric", "precision": 8, "scale": 2},
        }
    )
    assert schema.names == ("b", "a", "tags", "price")
    assert schema.pk == ("a", "b")
    assert schema.keyed
    tags = schema.columns[2]
    assert (tags.type, tags.dims, tags.pk_index, tags.not_null) == ("text", 1, None, False)
    assert schema.columns[0].not_null


def test_table_without_pk_is_identified_by_all_columns_sorted_by_name() -> None:
    schema = TableSchema.from_electric({"z": {"type": "text"}, "a": {"type": "int4"}, "m": {"type": "bool"}})
    assert schema.pk == ("a", "m", "z")
    assert not schema.keyed


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ([{"type": "int4"}], "must be an object"),
        ("id", "must be an object"),
        ({}, "no columns"),
        ({"id": "int4"}, "must be an object with a type"),
        ({"id": {}}, "no type"),
        ({"id": {"type": ""}}, "no type"),
        ({"id": {"type": "int4", "dims": -1}}, "dims"),
        ({"id": {"type": "int4", "dims": "1"}}, "dims"),
        ({"id": {"type": "int4", "pk_index": True}}, "pk_index"),
        ({"a": {"type": "int4", "pk_index": 0}, "b": {"type": "int4", "pk_index": 2}}, "without gaps"),
        ({"a": {"type": "int4", "pk_index": 0}, "b": {"type": "int4", "pk_index": 0}}, "without gaps"),
        ({"": {"type": "int4"}}, "column name"),
        ({"a\x00b": {"type": "int4"}}, "column name"),
        ({"Name": {"type": "text"}, "name": {"type": "text"}}, "differ only in case"),
    ],
)
def test_unusable_schema_raises_shape_error_naming_the_problem(raw: object, problem: str) -> None:
    with pytest.raises(ShapeError, match=problem):
        TableSchema.from_electric(raw)  # type: ignore[arg-type]


# --- DDL ---

HOSTILE = ['weird "name"', "semi;colon; DROP TABLE x; --", "select", "ünï ✓ code", "a.b", "[bracket]", "`tick`", "'q'"]


@pytest.mark.parametrize("name", HOSTILE)
def test_ddl_quotes_every_identifier(name: str) -> None:
    schema = TableSchema.from_electric(
        {name: {"type": "int4", "pk_index": 0}, name + " 2": {"type": "text"}, "order": {"type": "bytea"}}
    )
    db = sqlite3.connect(":memory:")
    db.execute(create_table_sql(name, schema))
    db.execute(f"INSERT INTO {quote_ident(name)} VALUES (1, 'x', x'00')")
    assert db.execute(f"SELECT * FROM {quote_ident(name)}").fetchall() == [(1, "x", b"\x00")]
    assert [r[1] for r in db.execute(f"PRAGMA table_info({quote_ident(name)})")] == [name, name + " 2", "order"]
    assert db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == [(name,)]


def test_ddl_declared_types_and_composite_pk_order() -> None:
    schema = TableSchema.from_electric(
        {
            "b": {"type": "text", "pk_index": 1},
            "a": {"type": "int8", "pk_index": 0},
            "f": {"type": "float8"},
            "n": {"type": "numeric"},
            "ok": {"type": "bool"},
            "raw": {"type": "bytea"},
            "doc": {"type": "jsonb"},
            "ts": {"type": "timestamptz"},
            "ids": {"type": "int4", "dims": 1},
            "pt": {"type": "point"},
        }
    )
    db = sqlite3.connect(":memory:")
    db.execute(create_table_sql("t", schema))
    info = {row[1]: (row[2], row[5]) for row in db.execute("PRAGMA table_info(t)")}
    assert info == {
        "b": ("TEXT", 2),
        "a": ("INTEGER", 1),
        "f": ("REAL", 0),
        "n": ("TEXT", 0),
        "ok": ("INTEGER", 0),
        "raw": ("BLOB", 0),
        "doc": ("TEXT", 0),
        "ts": ("TEXT", 0),
        "ids": ("TEXT", 0),
        "pt": ("TEXT", 0),
    }
    assert [(r[1], r[2], r[5]) for r in db.execute("PRAGMA table_info(t)")] == schema.signature()
    # TEXT affinity keeps numeric-looking text as text (a declared "NUMERIC"/"JSON" would not).
    db.execute("INSERT INTO t (a, b, n, doc) VALUES (1, 'k', '12.3400', '123')")
    assert db.execute("SELECT typeof(n), n, typeof(doc) FROM t").fetchone() == ("text", "12.3400", "text")
    # NaN stays text in a REAL column.
    db.execute("INSERT INTO t (a, b, f) VALUES (2, 'k', 'NaN')")
    assert db.execute("SELECT typeof(f) FROM t WHERE a = 2").fetchone() == ("text",)


def test_ddl_for_a_table_without_pk() -> None:
    schema = TableSchema.from_electric({"x": {"type": "int4"}, "y": {"type": "text"}})
    sql = create_table_sql("t", schema)
    assert "PRIMARY KEY" not in sql
    index = identity_index_sql("t", schema)
    assert index is not None
    db = sqlite3.connect(":memory:")
    db.execute(sql)
    db.execute(index)
    db.execute("INSERT INTO t VALUES (NULL, NULL)")  # Postgres allows NULLs in a PK-less table
    assert identity_index_sql("t", TableSchema.from_electric({"id": {"type": "int4", "pk_index": 0}})) is None


@pytest.mark.parametrize("name", ["_replica_x", "_REPLICA", "sqlite_master", "", "a\x00b"])
def test_reserved_or_unusable_table_names(name: str) -> None:
    with pytest.raises(ShapeError):
        create_table_sql(name, TableSchema.from_electric({"id": {"type": "int4"}}))


def test_create_table_sql_accepts_a_raw_electric_schema() -> None:
    assert create_table_sql("t", {"id": {"type": "int4", "pk_index": 0}}) == (
        'CREATE TABLE "t" ("id" INTEGER NOT NULL, PRIMARY KEY ("id"))'
    )
