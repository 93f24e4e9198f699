"""Hostile input: whatever a server, proxy or attacker sends, replica answers with a ReplicaError that
names the cause, the database stays intact, and nothing already committed is lost.

Each case is a crafted ``Response`` driven through ``ShapeLog`` + ``Store`` (the sync loop's own
path: ``receive``, then ``apply`` of any commit). After the refusal the test rebuilds the log from
the store's checkpoint, as the sync loop does, and shows that a good response still applies on top
of every row committed before. End-to-end cases (a representative subset through the full Replica
over an in-process MockTransport) are at the bottom; the wire parser and ``ShapeLog.receive`` are
fuzzed with hypothesis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replica import Backoff, Replica, connect
from replica.errors import ConfigError, ProtocolError, ReplicaError, ShapeError, StoreError
from replica.protocol import Response, Shape, ShapeLog, wire
from replica.protocol.messages import Change, Control, Move, parse_body
from replica.store.store import Store

HANDLE = "h-1"
SCHEMA = {
    "id": {"type": "int8", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "n": {"type": "int4"},
}
KEY = '"public"."items"/"{}"'


def change(op: str, i: int | str, **value: Any) -> dict[str, Any]:
    return {"key": KEY.format(i), "value": {"id": str(i), **value}, "headers": {"operation": op}}


UP_TO_DATE = {"headers": {"control": "up-to-date", "global_last_seen_lsn": "1"}}
SNAPSHOT_END = {"headers": {"control": "snapshot-end", "xmin": "1", "xmax": "2", "xip_list": []}}


def body(*messages: Any) -> bytes:
    return json.dumps(list(messages)).encode()


def ok(offset: str, raw: bytes, *, live: bool = True, handle: str = HANDLE, schema: Any = SCHEMA,
       cursor: str = "100", up_to_date: bool = True, **extra: str) -> Response:
    headers = {wire.H_HANDLE: handle, wire.H_OFFSET: offset}
    if live:
        headers[wire.H_CURSOR] = cursor
    elif schema is not None:
        headers[wire.H_SCHEMA] = schema if isinstance(schema, str) else json.dumps(schema)
    if up_to_date:
        headers[wire.H_UP_TO_DATE] = ""
    headers.update(extra)
    return Response(200, headers, raw)


@dataclass
class Synced:
    """A store holding a published shape (rows 1 and 2) and the live ShapeLog that follows it."""

    path: Path
    store: Store
    shape: Shape
    log: ShapeLog

    def rows(self) -> dict[int, tuple[Any, ...]]:
        conn = connect(self.path)
        try:
            return {r[0]: r for r in conn.execute('SELECT * FROM "items" ORDER BY "id"')}
        finally:
            conn.close()

    def integrity(self) -> list[str]:
        conn = connect(self.path)
        try:
            return [r[0] for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()

    def step(self, response: Response) -> None:
        commit = self.log.receive(response)
        if commit is not None:
            self.store.apply(commit)


def start(path: Path, shape: Shape | None = None, schema: Any = SCHEMA, rows: tuple[int, ...] = (1, 2)) -> Synced:
    store = Store(path)
    shape = shape or Shape("items")
    log = ShapeLog(shape, store.checkpoint(shape))
    synced = Synced(path, store, shape, log)
    snapshot = [change("insert", i, title=f"row {i}", n=str(i)) for i in rows]
    synced.step(ok("0_0", body(*snapshot, SNAPSHOT_END), live=False, schema=schema, up_to_date=False))
    synced.step(ok("0_inf", body(UP_TO_DATE), live=False, schema=schema))
    assert log.live
    return synced


@pytest.fixture
def synced(tmp_path: Path) -> Iterator[Synced]:
    s = start(tmp_path / "replica.db")
    yield s
    s.store.close()


def refuse(s: Synced, response: Response, error: type[ReplicaError], match: str) -> None:
    """The response is refused with ``error`` matching ``match``; nothing changes; the shape goes on."""
    rows = s.rows()
    stored = s.store.checkpoint(s.shape)
    state = s.log.checkpoint()
    request = s.log.next_request()
    with pytest.raises(error, match=match) as raised:
        s.step(response)
    assert isinstance(raised.value, ReplicaError)
    if isinstance(raised.value, (ProtocolError, StoreError)) or s.log.checkpoint() != state:
        # the sync loop drops the log and rebuilds it from the store's checkpoint
        s.log = ShapeLog(s.shape, s.store.checkpoint(s.shape))
    else:
        assert s.log.next_request() == request, "a refused response changed the next request"
    assert s.log.checkpoint() == state or s.log.checkpoint().offset == state.offset
    assert s.store.checkpoint(s.shape) == stored, "a refused response moved the stored checkpoint"
    assert s.rows() == rows, "a refused response changed committed rows"
    assert s.integrity() == ["ok"]
    # ... and a good response still applies on top of everything committed before
    s.step(ok("5_0", body(change("insert", 77, title="after", n="7") | {"headers": {"operation": "insert", "last": True}},
                         UP_TO_DATE)))
    assert s.rows() == {**rows, 77: (77, "after", 7)}


# --- bodies that are not a list of messages -------------------------------------------------------

NOT_ARRAYS = {
    "object": (b'{"messages": []}', "JSON array of messages, got dict"),
    "string": (b'"up-to-date"', "JSON array of messages, got str"),
    "number": (b"42", "JSON array of messages, got int"),
    "null": (b"null", "JSON array of messages, got NoneType"),
    "true": (b"true", "JSON array of messages, got bool"),
    "empty": (b"", "not valid JSON"),
    "whitespace": (b"  \n", "not valid JSON"),
    "html error page": (b"<html><body>502 Bad Gateway</body></html>", "not valid JSON"),
    "truncated": (body(change("insert", 3, title="t"), UP_TO_DATE)[:-7], "not valid JSON.*truncated"),
    "two documents": (b"[] []", "not valid JSON"),
    "invalid utf-8": (b'[{"key":"\xff\xfe","value":{},"headers":{"operation":"insert"}}]', "not valid (JSON|UTF-8)"),
    "lone surrogate escape": (b'[{"key":"k","value":{"title":"\\ud800"},"headers":{"operation":"insert"}}]',
                              "surrogate|UTF-8|not valid"),
    "NaN literal": (b'[{"key":"k","value":{"n":NaN},"headers":{"operation":"insert"}}]', "string or null|not valid"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "not valid JSON|nest"),
    "deep nesting in a value": (b'[{"key":"k","value":{"title":' + b"[" * 50_000 + b"]" * 50_000 + b'},'
                                b'"headers":{"operation":"insert"}}]', "not valid JSON|nest|string or null"),
}


@pytest.mark.guarantee("R1")
@pytest.mark.parametrize("case", NOT_ARRAYS, ids=list(NOT_ARRAYS))
def test_a_body_that_is_not_an_array_of_messages_is_refused(synced: Synced, case: str) -> None:
    raw, match = NOT_ARRAYS[case]
    refuse(synced, ok("3_0", raw), ProtocolError, match)


# --- messages that are not messages ---------------------------------------------------------------

BAD_MESSAGES = {
    "a number": ([1], "message 0 is a int, not an object"),
    "null": ([None], "message 0 is a NoneType"),
    "a list": ([[]], "message 0 is a list"),
    "no headers": ([{"key": KEY.format(3), "value": {"id": "3"}}], "message 0 has no headers object"),
    "headers not an object": ([{"key": KEY.format(3), "value": {"id": "3"}, "headers": "insert"}],
                              "no headers object"),
    "neither key nor control": ([{"value": {"id": "3"}, "headers": {"operation": "insert"}}],
                                "neither a change \\(no key\\) nor a control"),
    "unknown operation": ([{**change("insert", 3), "headers": {"operation": "upsert"}}], "unknown operation 'upsert'"),
    "no operation": ([{**change("insert", 3), "headers": {}}], "unknown operation None"),
    "operation not a string": ([{**change("insert", 3), "headers": {"operation": 1}}], "unknown operation 1"),
    "key not a string": ([{**change("insert", 3), "key": 3}], "key must be a string"),
    "key null": ([{**change("insert", 3), "key": None}], "key must be a string"),
    "no value": ([{"key": KEY.format(3), "headers": {"operation": "insert"}}], "value must be an object"),
    "value a list": ([{**change("insert", 3), "value": ["3"]}], "value must be an object"),
    "value a string": ([{**change("insert", 3), "value": "3"}], "value must be an object"),
    "number value": ([change("insert", 3, n=3)], "column 'n' is a int; Electric sends every value as a string"),
    "float value": ([change("insert", 3, n=3.5)], "column 'n' is a float"),
    "boolean value": ([change("insert", 3, title=True)], "column 'title' is a bool"),
    "object value": ([change("insert", 3, title={"$gt": ""})], "column 'title' is a dict"),
    "array value": ([change("insert", 3, title=["a"])], "column 'title' is a list"),
    "control not a string": ([{"headers": {"control": ["up-to-date"]}}], "control must be a string"),
    "up-to-date not last": ([UP_TO_DATE, change("insert", 3, title="x")], "up-to-date must be the last message"),
}


@pytest.mark.guarantee("R1")
@pytest.mark.parametrize("case", BAD_MESSAGES, ids=list(BAD_MESSAGES))
def test_a_malformed_message_is_refused_and_names_its_index(synced: Synced, case: str) -> None:
    messages, match = BAD_MESSAGES[case]
    refuse(synced, ok("3_0", body(*messages)), ProtocolError, match)


# --- values the schema cannot hold ----------------------------------------------------------------

BAD_VALUES = {
    "text in an int column": ([change("insert", 3, n="three")], ProtocolError, "column 'n' \\(int4\\): cannot store 'three'"),
    "int out of range": ([change("insert", 3, n="1" + "0" * 30)], ProtocolError, "column 'n'"),
    "unknown column": ([change("insert", 3, secret_column="x")], ProtocolError,
                       "column 'secret_column', which is not in electric-schema"),
    "insert without the primary key": ([{"key": KEY.format(3), "value": {"title": "x"},
                                         "headers": {"operation": "insert"}}], ProtocolError, "primary-key"),
    "null primary key": ([{"key": KEY.format(3), "value": {"id": None, "title": "x"},
                           "headers": {"operation": "insert"}}], ProtocolError, "primary-key"),
    "delete without the primary key": ([{"key": KEY.format(1), "value": {}, "headers": {"operation": "delete"}}],
                                       ProtocolError, "primary-key"),
    "key of another row": ([{"key": KEY.format(999), "value": {"id": "3", "title": "x"},
                             "headers": {"operation": "insert"}}], ProtocolError, "key .*999.* does not match"),
    "key of another table": ([{"key": '"public"."other"/"3"', "value": {"id": "3", "title": "x"},
                               "headers": {"operation": "insert"}}], ProtocolError, "does not match"),
    "key in another format": ([{"key": "3", "value": {"id": "3", "title": "x"},
                                "headers": {"operation": "insert"}}], ProtocolError, "does not match"),
    "update whose key disagrees": ([{"key": KEY.format(2), "value": {"id": "1", "title": "x"},
                                     "headers": {"operation": "update"}}], ProtocolError, "does not match"),
}


@pytest.mark.guarantee("R1")
@pytest.mark.parametrize("case", BAD_VALUES, ids=list(BAD_VALUES))
def test_a_value_the_table_cannot_hold_is_refused_without_a_trace(synced: Synced, case: str) -> None:
    messages, error, match = BAD_VALUES[case]
    refuse(synced, ok("3_0", body(*messages, UP_TO_DATE)), error, match)


@pytest.mark.guarantee("R1")
def test_a_bad_value_after_good_ones_in_one_response_leaves_none_of_them(synced: Synced) -> None:
    good = [change("insert", i, title="ok", n="1") for i in range(10, 20)]
    refuse(synced, ok("3_0", body(*good, change("update", 1, n="NaN-ish"), UP_TO_DATE)), ProtocolError, "column 'n'")


@pytest.mark.guarantee("R1")
def test_a_bad_value_in_a_staged_burst_is_refused_when_staged(synced: Synced) -> None:
    # a live response without up-to-date (a burst larger than a chunk) is staged, converted on arrival
    refuse(synced, ok("3_0", body(change("insert", 3, n="x")), up_to_date=False), ProtocolError, "column 'n'")


def test_a_10_mb_value_is_stored_whole(synced: Synced) -> None:
    big = "é" * (5 * 1024 * 1024)  # 10 MB of UTF-8
    synced.step(ok("3_0", body(change("insert", 3, title=big, n="3"), UP_TO_DATE)))
    assert synced.rows()[3] == (3, big, 3)
    assert synced.integrity() == ["ok"]


def test_a_value_beyond_sqlites_limit_is_a_store_error_and_nothing_is_lost(tmp_path: Path) -> None:
    s = start(tmp_path / "replica.db")
    s.store.connection.limit(apsw.SQLITE_LIMIT_LENGTH, 1_000_000)  # as if SQLITE_MAX_LENGTH were 1 MB
    refuse(s, ok("3_0", body(change("insert", 3, title="x" * 2_000_000), UP_TO_DATE)), StoreError,
           "exceeds SQLite's size limit|TooBig")
    s.store.close()


# --- positions: offsets, handles ------------------------------------------------------------------

BAD_POSITIONS = {
    "offset regresses": ({wire.H_OFFSET: "0_0"}, "electric-offset went backwards from 0_inf to 0_0"),
    "offset before all": ({wire.H_OFFSET: "-1"}, "went backwards"),
    "offset garbage": ({wire.H_OFFSET: "abc"}, "malformed electric-offset header.*'abc'"),
    "offset three parts": ({wire.H_OFFSET: "1_2_3"}, "malformed electric-offset"),
    "offset negative op": ({wire.H_OFFSET: "1_-2"}, "malformed electric-offset"),
    "offset float": ({wire.H_OFFSET: "1.5_0"}, "malformed electric-offset"),
    "offset now": ({wire.H_OFFSET: "now"}, "malformed electric-offset"),
    "offset empty": ({wire.H_OFFSET: ""}, "malformed electric-offset"),
    "offset with spaces": ({wire.H_OFFSET: " 1_0"}, "malformed electric-offset"),
    "offset unicode digits": ({wire.H_OFFSET: "١_٠"}, "malformed electric-offset"),
    "offset huge": ({wire.H_OFFSET: "9" * 5000 + "_0"}, "malformed electric-offset|too long"),
    "handle changes without a 409": ({wire.H_HANDLE: "h-2"}, "handle changed from 'h-1' to 'h-2' without a 409"),
    "handle empty": ({wire.H_HANDLE: ""}, "handle changed from 'h-1' to ''"),
    "no offset header": ({wire.H_OFFSET: None}, "lacks the electric-offset header"),
    "no handle header": ({wire.H_HANDLE: None}, "lacks the electric-handle header"),
    "no cursor on a live response": ({wire.H_CURSOR: None}, "lacks the electric-cursor header"),
}


@pytest.mark.guarantee("R3")
@pytest.mark.parametrize("case", BAD_POSITIONS, ids=list(BAD_POSITIONS))
def test_a_malformed_or_regressing_position_is_refused(synced: Synced, case: str) -> None:
    change_headers, match = BAD_POSITIONS[case]
    response = ok("3_0", body(change("insert", 3, title="x"), UP_TO_DATE))
    headers = {k: v for k, v in {**response.headers, **change_headers}.items() if v is not None}
    refuse(synced, Response(200, headers, response.body), ProtocolError, match)


def test_an_oversized_offset_is_refused_fast(synced: Synced) -> None:
    # int() of a 100k-digit string is slow (CPython limits it); the offset parser must not hang
    response = ok("1" * 100_000 + "_0", body(UP_TO_DATE))
    refuse(synced, response, ProtocolError, "malformed electric-offset")


# --- statuses and error bodies ---------------------------------------------------------------------

STATUSES = {
    "400 errors not an object": (400, b'{"errors": 5}', ShapeError, "400 the server refused"),
    "400 errors.offset a number": (400, b'{"errors": {"offset": 5}}', ShapeError, "400 the server refused"),
    "400 errors a list": (400, b'{"errors": ["x"]}', ShapeError, "400"),
    "400 deeply nested": (400, b"[" * 100_000 + b"]" * 100_000, ShapeError, "400"),
    "401 messages not a list": (401, b'{"errors": {"secret": 7}}', ShapeError, "401 unauthorized"),
    "404 html": (404, b"<html>not here</html>", ShapeError, "404 no shape endpoint"),
    "418": (418, b"teapot", ProtocolError, "unexpected HTTP status 418"),
    "302 without redirect": (302, b"", ProtocolError, "unexpected HTTP status 302"),
    "204 to a non-live request": (204, b"", None, ""),
    "503 with a date Retry-After": (503, b"", None, ""),
}


@pytest.mark.parametrize("case", STATUSES, ids=list(STATUSES))
def test_odd_statuses_and_error_bodies_are_named_errors(synced: Synced, case: str) -> None:
    status, raw, error, match = STATUSES[case]
    if error is None:  # these are retried: a transient or protocol error, never a crash
        with pytest.raises(ReplicaError):
            log = ShapeLog(synced.shape, synced.store.checkpoint(synced.shape).__class__(
                HANDLE, "0_inf", None, SCHEMA, up_to_date=False))
            log.receive(Response(status, {"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"}, raw))
        return
    refuse(synced, Response(status, {}, raw), error, match)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[" * 100_000, b'{"message": 1}', b"\xff\xfe"])
def test_a_409_with_any_body_is_a_must_refetch(synced: Synced, raw: bytes) -> None:
    assert synced.log.receive(Response(409, {wire.H_HANDLE: "h-2"}, raw)) is None
    request = dict(synced.log.next_request().params)
    assert request["offset"] == "-1" and request["handle"] == "h-2" and "cache-buster" in request
    assert synced.rows() == {1: (1, "row 1", 1), 2: (2, "row 2", 2)}  # old rows stay until the refetch


# --- electric-schema ------------------------------------------------------------------------------

BAD_SCHEMAS = {
    "not JSON": ("{id: int8}", ProtocolError, "electric-schema header is not JSON"),
    "an array": (json.dumps([{"id": "int8"}]), ProtocolError, "must be a JSON object of column"),
    "a string": (json.dumps("int8"), ProtocolError, "must be a JSON object"),
    "no columns": ("{}", ShapeError, "electric-schema has no columns"),
    "column spec a string": (json.dumps({"id": "int8"}), ShapeError, "column 'id' must be an object with a type"),
    "no type": (json.dumps({"id": {"pk_index": 0}}), ShapeError, "column 'id' has no type"),
    "type a number": (json.dumps({"id": {"type": 20}}), ShapeError, "column 'id' has no type"),
    "pk_index a string": (json.dumps({"id": {"type": "int8", "pk_index": "0"}}), ShapeError,
                          "pk_index must be a non-negative integer"),
    "pk_index negative": (json.dumps({"id": {"type": "int8", "pk_index": -1}}), ShapeError, "pk_index"),
    "pk_index twice": (json.dumps({"a": {"type": "int8", "pk_index": 0}, "b": {"type": "int8", "pk_index": 0}}),
                       ShapeError, "pk_index values must be 0..n-1"),
    "pk_index gap": (json.dumps({"a": {"type": "int8", "pk_index": 1}}), ShapeError, "pk_index values must be 0..n-1"),
    "dims negative": (json.dumps({"id": {"type": "int8", "pk_index": 0}, "t": {"type": "text", "dims": -1}}),
                      ShapeError, "dims must be a non-negative integer"),
    "columns differing in case": (json.dumps({"id": {"type": "int8", "pk_index": 0}, "A": {"type": "text"},
                                              "a": {"type": "text"}}), ShapeError, "differ only in case"),
    "empty column name": (json.dumps({"id": {"type": "int8", "pk_index": 0}, "": {"type": "text"}}), ShapeError,
                          "unusable column name ''"),
    "NUL in a column name": (json.dumps({"id": {"type": "int8", "pk_index": 0}, "a\u0000b": {"type": "text"}}),
                             ShapeError, "unusable column name"),
    "schema contradicts the rows": (json.dumps({"id": {"type": "int8", "pk_index": 0}, "other": {"type": "text"}}),
                                    ProtocolError, "column 'title', which is not in electric-schema"),
    "deeply nested": ("[" * 100_000 + "]" * 100_000, ProtocolError, "electric-schema header is not JSON|JSON object"),
}


@pytest.mark.parametrize("case", BAD_SCHEMAS, ids=list(BAD_SCHEMAS))
def test_an_unusable_schema_is_refused_before_any_table_is_made(tmp_path: Path, case: str) -> None:
    raw_schema, error, match = BAD_SCHEMAS[case]
    store = Store(tmp_path / "replica.db")
    shape = Shape("items")
    log = ShapeLog(shape, store.checkpoint(shape))
    snapshot = ok("0_0", body(change("insert", 1, title="a"), SNAPSHOT_END), live=False, schema=raw_schema,
                  up_to_date=False)
    final = ok("0_inf", body(UP_TO_DATE), live=False, schema=raw_schema)
    with pytest.raises(error, match=match):
        for response in (snapshot, final):
            commit = log.receive(response)
            if commit is not None:
                store.apply(commit)
    assert store.checkpoint(shape) is None  # nothing to resume from: the next try starts over
    conn = connect(tmp_path / "replica.db")
    assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"]
    assert not conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'items'").fetchall()
    conn.close()
    store.close()


def test_a_new_schema_on_the_same_handle_does_not_replace_the_known_one(synced: Synced) -> None:
    # electric-schema only changes with a new handle; a contradicting one mid-log is ignored
    other = {"id": {"type": "text", "pk_index": 0}, "evil": {"type": "text"}}
    synced.step(ok("3_0", body(change("insert", 3, title="c", n="3"), UP_TO_DATE),
                   **{wire.H_SCHEMA: json.dumps(other)}))
    assert synced.rows()[3] == (3, "c", 3)


@pytest.mark.guarantee("R9")
def test_a_schema_without_a_primary_key_identifies_rows_by_every_column(tmp_path: Path) -> None:
    schema = {"title": {"type": "text"}, "n": {"type": "int4"}}
    store = Store(tmp_path / "replica.db")
    shape = Shape("items")
    log = ShapeLog(shape, store.checkpoint(shape))
    key = '"public"."items"/"{}"/"{}"'
    rows = [{"key": key.format(n, t), "value": {"title": t, "n": n}, "headers": {"operation": "insert"}}
            for t, n in (("a", "1"), ("a", "1"), ("b", "2"))]
    for response in (ok("0_0", body(*rows, SNAPSHOT_END), live=False, schema=schema, up_to_date=False),
                     ok("0_inf", body(UP_TO_DATE), live=False, schema=schema)):
        commit = log.receive(response)
        if commit is not None:
            store.apply(commit)
    conn = connect(tmp_path / "replica.db")
    assert sorted(conn.execute('SELECT "title", "n" FROM "items"')) == [("a", 1), ("b", 2)]
    conn.close()
    store.close()


# --- names: tables and columns --------------------------------------------------------------------

ODD_COLUMNS = [
    'quo"te',
    "semi; DROP TABLE items; --",
    "with space",
    "ünïcödé ✓",
    "select",
    "_replica_shapes",
    "rowid",
    "a.b",
    "'single'",
    "[bracket]",
    "`tick`",
    "x" * 300,
]


@pytest.mark.parametrize("column", ODD_COLUMNS, ids=range(len(ODD_COLUMNS)))
def test_odd_column_names_are_stored_as_data_never_as_sql(tmp_path: Path, column: str) -> None:
    schema = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, column: {"type": "text"}}
    store = Store(tmp_path / "replica.db")
    shape = Shape("items")
    log = ShapeLog(shape, store.checkpoint(shape))
    insert = {"key": KEY.format(1), "value": {"id": "1", column: "v1"}, "headers": {"operation": "insert"}}
    update = {"key": KEY.format(1), "value": {"id": "1", column: "v2"}, "headers": {"operation": "update"}}
    for response in (ok("0_0", body(insert, SNAPSHOT_END), live=False, schema=schema, up_to_date=False),
                     ok("0_inf", body(UP_TO_DATE), live=False, schema=schema),
                     ok("1_0", body(update, UP_TO_DATE))):
        commit = log.receive(response)
        if commit is not None:
            store.apply(commit)
    conn = connect(tmp_path / "replica.db")
    columns = [c[1] for c in conn.execute('PRAGMA table_info("items")')]
    assert columns == ["id", column]
    assert list(conn.execute('SELECT * FROM "items"')) == [(1, "v2")]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert {"items", "_replica_shapes", "_replica_stages", "_replica_staging"} <= tables
    conn.close()
    store.close()


ODD_TABLES = {
    'quo"te': '"quo""te"',
    "semi; DROP TABLE _replica_shapes; --": '"semi; DROP TABLE _replica_shapes; --"',
    "with space": '"with space"',
    "ünïcödé": '"ünïcödé"',
    "select": '"select"',
    "Mixed.Dot": '"Mixed.Dot"',
}


@pytest.mark.parametrize("local", ODD_TABLES, ids=range(len(ODD_TABLES)))
def test_odd_table_names_are_quoted_everywhere(tmp_path: Path, local: str) -> None:
    shape = Shape(ODD_TABLES[local])
    assert shape.local_name == local
    store = Store(tmp_path / "replica.db")
    log = ShapeLog(shape, store.checkpoint(shape))
    key = wire.build_key("public", local, ["1"])
    row = {"key": key, "value": {"id": "1", "title": "a", "n": "1"}, "headers": {"operation": "insert"}}
    for response in (ok("0_0", body(row, SNAPSHOT_END), live=False, up_to_date=False),
                     ok("0_inf", body(UP_TO_DATE), live=False)):
        commit = log.receive(response)
        if commit is not None:
            store.apply(commit)
    conn = connect(tmp_path / "replica.db")
    quoted = '"' + local.replace('"', '""') + '"'
    assert list(conn.execute(f"SELECT * FROM {quoted}")) == [(1, "a", 1)]
    assert conn.execute('SELECT "rows" FROM "_replica_shapes" WHERE "name" = ?', (local,)).fetchone() == (1,)
    assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"]
    conn.close()
    store.close()


@pytest.mark.parametrize("name", ["_replica_shapes", "_REPLICA_stages", "_replica_x", "sqlite_master", "SQLITE_x"])
def test_reserved_local_table_names_are_refused_with_the_reason(tmp_path: Path, name: str) -> None:
    with Store(tmp_path / "replica.db") as store, pytest.raises(ShapeError, match="is reserved"):
        store.checkpoint(Shape("items", name=name))
    conn = connect(tmp_path / "replica.db")
    assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"]
    conn.close()


@pytest.mark.parametrize("table", ["", '"unterminated', "a.b.c", " items", 'a"b'])
def test_malformed_table_parameters_are_config_errors(table: str) -> None:
    with pytest.raises(ConfigError, match="table"):
        Shape(table)


# --- fuzzing: any bytes, any JSON ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
message_like = st.fixed_dictionaries(
    {},
    optional={
        "key": st.one_of(st.text(max_size=12), st.integers(), st.none()),
        "value": st.one_of(st.dictionaries(st.sampled_from(["id", "title", "n", "x"]),
                                           st.one_of(st.none(), st.text(max_size=6), st.integers())), json_values),
        "headers": st.one_of(
            st.fixed_dictionaries({}, optional={
                "operation": st.sampled_from(["insert", "update", "delete", "upsert", 1, None]),
                "control": st.sampled_from(["up-to-date", "snapshot-end", "must-refetch", "x", 3]),
                "event": st.just("move-in"),
                "last": st.booleans(),
            }),
            json_values,
        ),
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(message_like, max_size=5).map(lambda v: json.dumps(v).encode()),
)
headers_strategy = st.fixed_dictionaries(
    {},
    optional={
        wire.H_HANDLE: st.sampled_from([HANDLE, "h-2", ""]),
        wire.H_OFFSET: st.sampled_from(["0_0", "0_inf", "3_0", "3_inf", "-1", "abc", "9_9", "1_2_3"]),
        wire.H_CURSOR: st.sampled_from(["1", "200", ""]),
        wire.H_SCHEMA: st.one_of(st.just(json.dumps(SCHEMA)), st.text(max_size=20)),
        wire.H_UP_TO_DATE: st.just(""),
    },
)


@settings(max_examples=300, deadline=None)
@given(raw=bodies)
def test_fuzz_parse_body_returns_messages_or_a_protocol_error(raw: bytes) -> None:
    try:
        messages = parse_body(raw)
    except ProtocolError:
        return
    assert all(isinstance(m, (Change, Control, Move)) for m in messages)


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synced]:
    s = start(tmp_path_factory.mktemp("fuzz") / "replica.db")
    yield s
    s.store.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(status=st.sampled_from([200, 200, 200, 204, 304, 400, 409, 429, 500, 502, 418]), headers=headers_strategy,
       raw=bodies, live=st.booleans())
def test_fuzz_receive_commits_or_raises_a_replica_error_and_never_half_moves(
    fuzz_store: Synced, status: int, headers: dict[str, str], raw: bytes, live: bool
) -> None:
    s = fuzz_store
    checkpoint = s.store.checkpoint(s.shape)
    assert checkpoint is not None
    if not live:
        from dataclasses import replace

        checkpoint = replace(checkpoint, up_to_date=False)
    log = ShapeLog(s.shape, checkpoint)
    before = log.checkpoint()
    request = log.next_request()
    try:
        commit = log.receive(Response(status, headers, raw))
    except ReplicaError:
        assert log.checkpoint() == before, "state moved on an error"
        assert log.next_request() == request
        return
    if commit is not None:
        try:
            s.store.apply(commit)
        except ReplicaError:
            pass
    assert s.integrity() == ["ok"]


# --- end to end: a representative subset through the full Replica ----------------------------------


class HostileServer:
    """A tiny Electric: a good snapshot, then whatever ``live`` returns for live requests."""

    def __init__(self, live: Callable[[int], httpx.Response]) -> None:
        self.live = live
        self.live_requests = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        base = {wire.H_HANDLE: HANDLE}
        if params.get("live") == "true":
            self.live_requests += 1
            return self.live(self.live_requests)
        if params["offset"] == "-1":
            return httpx.Response(200, headers={**base, wire.H_OFFSET: "0_0", wire.H_SCHEMA: json.dumps(SCHEMA)},
                                  content=body(change("insert", 1, title="a", n="1"), SNAPSHOT_END))
        return httpx.Response(200, headers={**base, wire.H_OFFSET: "0_inf", wire.H_SCHEMA: json.dumps(SCHEMA),
                                            wire.H_UP_TO_DATE: ""}, content=body(UP_TO_DATE))


def live_ok(offset: str, raw: bytes, **extra: str) -> httpx.Response:
    return httpx.Response(200, headers={wire.H_HANDLE: HANDLE, wire.H_OFFSET: offset, wire.H_CURSOR: "5",
                                        wire.H_UP_TO_DATE: "", **extra}, content=raw)


E2E = {
    "not an array": lambda n: live_ok("1_0", b'{"a": 1}'),
    "number value": lambda n: live_ok("1_0", body(change("insert", 2, n=2), UP_TO_DATE)),
    "offset regresses": lambda n: live_ok("0_0", body(UP_TO_DATE)),
    "handle changes": lambda n: live_ok("1_0", body(UP_TO_DATE), **{wire.H_HANDLE: "other"}),
    "invalid utf-8": lambda n: live_ok("1_0", b'["\xff"]'),
    "key mismatch": lambda n: live_ok("1_0", body({**change("insert", 2, title="x"), "key": KEY.format(9)},
                                                  UP_TO_DATE)),
}


@pytest.mark.anyio
@pytest.mark.guarantee("R5")
@pytest.mark.parametrize("case", E2E, ids=list(E2E))
async def test_hostile_live_answers_through_the_full_replica(tmp_path: Path, case: str) -> None:
    import anyio

    server = HostileServer(E2E[case])
    db = tmp_path / "replica.db"
    replica = Replica(db, "http://hostile/v1/shape", Shape("items"), transport=httpx.MockTransport(server.handler),
                      backoff=Backoff(initial=0.01, cap=0.05))
    async with replica:
        with anyio.fail_after(5):
            await replica.synced()
            while server.live_requests < 4:
                await anyio.sleep(0.01)
        (state,) = replica.status()
        assert state.state == "offline" and state.error
    conn = connect(db)
    assert list(conn.execute('SELECT * FROM "items"')) == [(1, "a", 1)]
    assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"]
    assert conn.execute('SELECT "offset" FROM "_replica_shapes"').fetchone() == ("0_inf",)
    conn.close()
    assert server.live_requests < 50, "a hot loop on a hostile answer"
