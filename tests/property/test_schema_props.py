"""Postgres text → SQLite round-trips: what Postgres would send comes back out of SQLite unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import apsw
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.typemap.schema import TableSchema, create_table_sql

PROPS = settings(deadline=None, max_examples=150)

# Text as Postgres stores it: valid UTF-8 (no lone surrogates), no NUL (Postgres text cannot hold one).
pg_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


def round_trip(pg_type: str, text: str | None, dims: int = 0) -> Any:
    """Convert like the store does, bind into a table made by create_table_sql, read it back."""
    schema = TableSchema.from_electric({"id": {"type": "int4", "pk_index": 0}, "v": {"type": pg_type, "dims": dims}})
    db = apsw.Connection(":memory:")
    db.execute(create_table_sql("t", schema))
    row = schema.convert_row({"id": "1", "v": text})
    db.execute('INSERT INTO "t" VALUES (?, ?)', (row["id"], row["v"]))
    return db.execute('SELECT "v" FROM "t"').fetchone()[0]


@PROPS
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from(["int8", "int4", "int2", "oid"]))
def test_integers_round_trip(value: int, pg_type: str) -> None:
    stored = round_trip(pg_type, str(value))
    assert stored == value and type(stored) is int


@PROPS
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_floats_round_trip(value: float) -> None:
    stored = round_trip("float8", repr(value))  # Postgres ≥ 12 prints the shortest exact form too
    # Equal as numbers; SQLite itself does not keep the sign of -0.0 (it stores 0).
    assert stored == value and isinstance(stored, float)


@PROPS
@given(st.sampled_from(["Infinity", "-Infinity", "NaN"]))
def test_float_specials_survive(text: str) -> None:
    stored = round_trip("float8", text)
    assert stored == "NaN" if text == "NaN" else stored == float(text.replace("Infinity", "inf"))


@PROPS
@given(st.sampled_from([("t", 1), ("true", 1), ("f", 0), ("false", 0)]))
def test_bools(pair: tuple[str, int]) -> None:
    assert round_trip("bool", pair[0]) == pair[1]


@PROPS
@given(st.binary(), st.booleans())
def test_bytea_round_trips(value: bytes, upper: bool) -> None:
    text = "\\x" + (value.hex().upper() if upper else value.hex())
    assert round_trip("bytea", text) == value


@PROPS
@given(pg_text, st.sampled_from(["text", "varchar", "bpchar", "numeric", "json", "uuid", "mood", "interval"]))
def test_text_like_values_are_kept_exactly(text: str, pg_type: str) -> None:
    assert round_trip(pg_type, text) == text


@PROPS
@given(st.sampled_from(["int8", "float8", "bool", "bytea", "text", "jsonb", "timestamptz"]), st.integers(0, 2))
def test_null_round_trips(pg_type: str, dims: int) -> None:
    assert round_trip(pg_type, None, dims) is None


# --- arrays: render nested lists as Postgres would, parse them back ---


def pg_array(node: Any, render: Any) -> str:
    if isinstance(node, list):
        return "{" + ",".join(pg_array(item, render) for item in node) + "}"
    if node is None:
        return "NULL"
    return render(node)


def quote(text: str) -> str:
    # array_out quotes when needed; quoting always is equally valid input, so do it at random below.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rectangular(elements: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """1- or 2-dimensional arrays (Postgres arrays are rectangular)."""
    one = st.lists(elements, max_size=5)
    two = st.integers(1, 3).flatmap(
        lambda width: st.lists(st.lists(elements, min_size=width, max_size=width), max_size=3)
    )
    return st.one_of(one, two)


@PROPS
@given(rectangular(st.one_of(st.none(), pg_text)), st.booleans())
def test_text_arrays_round_trip(value: list[Any], always_quote: bool) -> None:
    def render(text: str) -> str:
        safe = text and text.upper() != "NULL" and not any(c in text for c in '{},"\\') and text == text.strip()
        return text if safe and not always_quote and not any(c.isspace() for c in text) else quote(text)

    dims = 2 if value and isinstance(value[0], list) else 1
    stored = round_trip("text", pg_array(value, render), dims)
    assert json.loads(stored) == value


@PROPS
@given(rectangular(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))))
def test_int8_arrays_round_trip(value: list[Any]) -> None:
    stored = round_trip("int8", pg_array(value, str), 1)
    assert json.loads(stored) == value


@PROPS
@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.booleans())))
def test_float_and_bool_arrays(value: list[Any]) -> None:
    floats = [v if not isinstance(v, bool) else float(v) for v in value]
    assert json.loads(round_trip("float8", pg_array(floats, repr), 1)) == floats
    bools = [v if v is None else bool(v) for v in value]
    assert json.loads(round_trip("bool", pg_array(bools, lambda b: "t" if b else "f"), 1)) == bools


# --- timestamps: text order is time order, and SQLite reads the instant back ---

instants = st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(9998, 12, 30)).map(
    lambda d: d.replace(tzinfo=UTC)
)
offsets = st.integers(-15 * 60, 15 * 60).map(lambda minutes: timedelta(minutes=minutes))


def pg_timestamptz(instant: datetime, offset: timedelta) -> str:
    local = (instant + offset).replace(tzinfo=None)
    text = local.isoformat(sep=" ")
    if "." in text:  # Postgres prints no trailing zeros in the fraction
        text = text.rstrip("0")
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}" + (f":{rest:02d}" if rest else "")


@PROPS
@given(st.lists(st.tuples(instants, offsets), min_size=2, max_size=6))
def test_timestamptz_sorts_in_time_order_and_sqlite_reads_it(values: list[tuple[datetime, timedelta]]) -> None:
    db = apsw.Connection(":memory:")
    stored = [round_trip("timestamptz", pg_timestamptz(instant, offset)) for instant, offset in values]
    in_text_order = [instant for _text, instant in sorted(zip(stored, [v[0] for v in values], strict=True))]
    assert in_text_order == sorted(in_text_order)
    for (instant, _offset), text in zip(values, stored, strict=True):
        unix = db.execute("SELECT unixepoch(?, 'subsec')", (text,)).fetchone()[0]
        # SQLite's date functions keep milliseconds (truncated), and doubles far from 1970 lose µs.
        assert abs(unix - instant.timestamp()) < 0.002
