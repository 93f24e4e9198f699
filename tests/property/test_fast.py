"""Rows converted ahead (replica.fast): cut only between messages, used only for their own body.

``split`` is allowed to guess: its guarantee is that every part is valid JSON only when the cut
fell between elements, so a wrong guess makes a conversion fail rather than convert other rows.
The property checks that guarantee on hostile bodies: strings holding the boundary text, nested
arrays of objects, and both compact and spaced separators.
"""

from __future__ import annotations

import json
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from replica import fast
from replica.errors import ProtocolError
from replica.fast import convert as scratch
from replica.protocol import Checkpoint, Commit, InsertBody, Shape
from replica.protocol import framing as cuts
from replica.protocol.wire import build_key
from replica.store.store import Store
from replica.typemap.schema import TableSchema

SQLITE = apsw.Connection(":memory:")
_tricky = st.sampled_from(['},{"', '}, {"key"', '"},{"', "}", "{", "[", "]", ",", '\\"', "x"])
_text = st.lists(st.one_of(_tricky, st.text('ab{}[],:" \\é', max_size=3)), max_size=5).map("".join)
_names = st.sampled_from(["key", "value", "headers", '},{"', '"}, {"key', "{[", "é"])
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_names, inner, max_size=3)),
    max_leaves=8,
)
_elements = st.lists(st.dictionaries(_names, _json, min_size=1, max_size=4), min_size=1, max_size=12)


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(elements=_elements, parts=st.integers(1, 4), piece=st.integers(1, 400), spaced=st.booleans())
def test_a_cut_is_between_elements_or_makes_invalid_json(
    elements: list[dict[str, Any]], parts: int, piece: int, spaced: bool
) -> None:
    body = json.dumps(elements, separators=(", ", ": ") if spaced else (",", ":")).encode()
    ranges = cuts.split(body, parts, 0)
    assert 1 <= len(ranges) <= parts and ranges[0][0] == 0 and ranges[-1][1] == len(body)
    # Each part is converted in pieces, cut the same way.
    ranges = [cut for start, end in ranges for cut in cuts.pieces(body, start, end, piece)]
    texts = [cuts.run_text(body, start, end) for start, end in ranges]
    # SQLite's reader (JSON5, a superset) decides whether a part converts at all.
    if not all(SQLITE.execute("SELECT json_valid(?, 2)", (text,)).fetchone()[0] for text in texts):
        return  # a wrong cut: that part fails to convert, and the writer converts the body itself
    assert [element for text in texts for element in json.loads(text)] == elements


@st.composite
def _ranges(draw: st.DrawFn) -> tuple[bytes, int, int]:
    body = b"".join(draw(st.lists(st.sampled_from([b"\\", b"u", b"0", b"\\u000", b"\\u0000", b"a"]), max_size=12)))
    start = draw(st.integers(0, len(body)))
    return body, start, draw(st.integers(start, len(body)))


@given(_ranges())
@example((b"a\\u0000", 1, 7))  # the escape ends where the range does
@example((b"\\u0000a", 0, 5))  # the range ends inside it
def test_an_escaped_nul_is_found_in_exactly_the_range_asked(drawn: tuple[bytes, int, int]) -> None:
    body, start, end = drawn
    expected = b"\\u0000" in body[start:end]
    assert scratch.nul_escape(body, start, end) is expected  # the C library's memmem, on this platform
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(scratch, "_memmem", None)  # where there is none: the regex
        assert scratch.nul_escape(body, start, end) is expected


def test_messages_are_cut_into_halves_then_pieces_and_small_bodies_kept_whole() -> None:
    messages = [{"key": f'"public"."t"/"{i}"', "value": {"id": str(i)}, "headers": {"operation": "insert"}}
                for i in range(30_000)]
    body = json.dumps(messages, separators=(",", ":")).encode()
    assert len(body) > 2 * scratch.MIN_PART
    first, second = cuts.split(body, scratch.PARTS, scratch.MIN_PART)
    assert first[0] == 0 and second[1] == len(body) and first[1] < second[0]
    halves = [json.loads(cuts.run_text(body, *cut)) for cut in (first, second)]
    assert halves[0] + halves[1] == messages and 0 <= first[1] - len(body) // 2 < 100  # the first cut after the middle
    small = body[: scratch.MIN_PART].rsplit(b",{", 1)[0] + b"]"
    assert cuts.split(small, scratch.PARTS, scratch.MIN_PART) == [(0, len(small))]
    # Each half converts in pieces of about PIECE bytes: one element more at most.
    runs = cuts.pieces(body, *second, scratch.PIECE)
    assert runs[0][0] == second[0] and runs[-1][1] == second[1] and len(runs) > 1
    assert all(0 < end - start <= scratch.PIECE + 200 for start, end in runs)
    assert [m for run in runs for m in json.loads(cuts.run_text(body, *run))] == halves[1]


# --- through the store ---

SCHEMA = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "n": {"type": "int4"}}


TABLE = TableSchema.from_electric(SCHEMA)


def changes_of(rows: range, bad: int | None = None) -> InsertBody:
    body = json.dumps([
        {"key": build_key("public", "items", [str(i)]), "value": {"id": str(i), "n": "x1" if i == bad else str(i)},
         "headers": {"operation": "insert"}} for i in rows
    ]).encode()
    return InsertBody(body, len(rows), tuple(SCHEMA))


@pytest.fixture
def spy(bulk_calls: list[tuple[bool, int]], monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    monkeypatch.setattr(scratch, "MIN_PART", 0)  # these bodies are small: cut them anyway
    return bulk_calls


@pytest.fixture
def converter() -> Any:
    workers = fast.Converter()
    yield workers
    workers.close()


def publish(store: Store, changes: InsertBody, conversion: fast.Conversion | None, table: TableSchema = TABLE) -> None:
    """Stage ``changes`` (a table's first snapshot), then publish them."""
    store.apply(Commit(Shape("items"), changes, Checkpoint("h", "0_0", None, SCHEMA, False), False, True, table),
                conversion)
    store.apply(Commit(Shape("items"), (), Checkpoint("h", "0_inf", None, SCHEMA, True), True))


def test_a_conversion_is_used_only_for_the_commit_of_its_own_body(
    tmp_path: Any, spy: list[tuple[bool, int]], converter: fast.Converter
) -> None:
    with Store(str(tmp_path / "a.db")) as store:
        twin = changes_of(range(1, 301))  # the same bytes, another body
        publish(store, changes_of(range(1, 301)), converter.start(twin.body, TABLE))
        assert store.connection.execute("SELECT count(*), sum(n) FROM items").fetchone() == (300, 45150)
        attached = [row[1] for row in store.connection.execute("PRAGMA database_list")]
        assert not [name for name in attached if name.startswith("replica_scratch")]  # nothing left attached
    assert spy == [(True, 0)]  # converted by the writer: the conversion was not for this body


def test_a_conversion_is_used_only_with_the_table_it_was_made_for(
    tmp_path: Any, spy: list[tuple[bool, int]], converter: fast.Converter
) -> None:
    with Store(str(tmp_path / "a.db")) as store:
        changes = changes_of(range(1, 301))
        other = TableSchema.from_electric(SCHEMA, {"n": "text"})
        publish(store, changes, converter.start(changes.body, other))  # e.g. types changed meanwhile
        assert spy == [(True, 0)]
    with Store(str(tmp_path / "b.db")) as store:
        publish(store, changes, converter.start(changes.body, TABLE))
        assert spy[-1] == (True, 2)  # the same body and table: only copied


def test_a_bad_value_in_one_part_is_named_by_the_python_route(
    tmp_path: Any, spy: list[tuple[bool, int]], converter: fast.Converter
) -> None:
    with Store(str(tmp_path / "a.db")) as store:
        changes = changes_of(range(1, 301), bad=250)
        conversion = converter.start(changes.body, TABLE)
        with pytest.raises(ProtocolError, match="column 'n' \\(int4\\): cannot store 'x1'"):
            publish(store, changes, conversion)
        assert store.connection.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'items'").fetchone() == (0,)
    assert spy == [(False, 0)]  # the second half failed, so neither was used, and SQLite refused it too


def test_a_part_converted_in_pieces_keeps_log_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scratch, "PIECE", 1024)
    body = changes_of(range(300, 0, -1)).body  # descending ids: any order but the body's would show
    assert len(cuts.pieces(body, 0, len(body), scratch.PIECE)) > 10
    converted = scratch.convert(body, 0, len(body), TABLE)
    assert converted is not None
    reader = apsw.Connection(converted.uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        assert [row[0] for row in reader.execute("SELECT c0 FROM rows ORDER BY rowid")] == list(range(300, 0, -1))
    finally:
        reader.close()
        converted.close()


def test_a_closed_converter_converts_nothing_ahead() -> None:
    workers = fast.Converter()
    workers.close()
    assert workers.start(changes_of(range(1, 301)).body, TABLE) is None


def test_parts_that_cannot_be_attached_leave_the_writer_its_own_route(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, converter: fast.Converter
) -> None:
    monkeypatch.setattr(scratch, "MIN_PART", 0)
    with Store(str(tmp_path / "a.db")) as store:
        changes, conn = changes_of(range(1, 301)), store.connection

        def parts() -> list[scratch.Converted] | None:
            conversion = converter.start(changes.body, TABLE)
            return conversion.parts_for(changes, TABLE) if conversion is not None else None

        conn.execute("ATTACH ':memory:' AS replica_scratch1")  # e.g. left by a DETACH that failed
        with fast.attached(conn, parts()) as attached:
            assert attached is None
            assert [row[1] for row in conn.execute("PRAGMA database_list")][-1] == "replica_scratch1"  # part 0 undone
        conn.execute("DETACH replica_scratch1")
        with fast.attached(conn, parts()) as attached:
            assert attached is not None and len(attached.names) == 2
            assert conn.execute("SELECT count(*) FROM replica_scratch1.rows").fetchone()[0] > 100
        assert not [row for row in conn.execute("PRAGMA database_list") if row[1].startswith("replica_scratch")]
