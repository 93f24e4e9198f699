"""ShapeLog as a table: (phase × response kind) → (commit, error, next request). Every cell is listed."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from replica.errors import ConfigError, ProtocolError, ServerBusy, ShapeError
from replica.protocol import Checkpoint, Response, Shape, ShapeLog, wire
from replica.protocol.shape import subquery_tables
from replica.typemap.schema import TableSchema

SCHEMA = {"id": {"type": "int4", "pk_index": 0, "not_null": True}, "title": {"type": "text"}}
SHAPE = Shape("items")
H, H2, OLD = "h-1", "h-2", "h-old"
KEY = '"public"."items"/"1"'
INSERT = {"key": KEY, "value": {"id": "1", "title": "a"}, "headers": {"operation": "insert"}}
UTD = {"headers": {"control": wire.UP_TO_DATE, "global_last_seen_lsn": "9"}}
SNAPSHOT_END = {"headers": {"control": wire.SNAPSHOT_END, "xmin": "1", "xmax": "1", "xip_list": []}}

PHASES = ("initial", "syncing", "live")


def make_log(phase: str) -> ShapeLog:
    """A log in ``phase`` that has seen a 409 of handle OLD earlier (so stale replays are detectable)."""
    if phase == "initial":
        log = ShapeLog(SHAPE)
    elif phase == "syncing":
        log = ShapeLog(SHAPE, Checkpoint(H, "0_0", None, SCHEMA, up_to_date=False))
    else:
        log = ShapeLog(SHAPE, Checkpoint(H, "0_inf", "100", SCHEMA, up_to_date=True))
    log.expired_handle = OLD
    return log


def ok(log: ShapeLog, body: list, *, offset: str | None = None, handle: str = H, drop: tuple = ()) -> Response:
    headers = {wire.H_HANDLE: handle, wire.H_OFFSET: offset or _next_offset(log.offset)}
    if log.live:
        headers[wire.H_CURSOR] = "120"
    else:
        headers[wire.H_SCHEMA] = json.dumps(SCHEMA)
    if body and body[-1] is UTD:
        headers[wire.H_UP_TO_DATE] = ""
    for name in drop:
        headers.pop(name)
    return Response(200, headers, json.dumps(body).encode())


def _next_offset(offset: str) -> str:
    return {"-1": "0_0", "0_0": "0_1", "0_inf": "50_0"}[offset]


def error(status: int, body: object = None, **headers: str) -> Callable[[ShapeLog], Response]:
    return lambda log: Response(status, headers, json.dumps(body).encode() if body is not None else b"")


RESPONSES: dict[str, Callable[[ShapeLog], Response]] = {
    "data": lambda log: ok(log, [INSERT]),
    "data+up-to-date": lambda log: ok(log, [INSERT, UTD]),
    "quiet up-to-date": lambda log: ok(log, [UTD], offset="0_inf" if log.offset == "-1" else log.offset),
    "snapshot-end only": lambda log: ok(log, [SNAPSHOT_END]),
    "legacy 204": error(204),
    "409 with handle": error(409, [{"headers": {"control": "must-refetch"}}], **{wire.H_HANDLE: H2}),
    "409 without handle": error(409, [{"headers": {"control": "must-refetch"}}]),
    "409 empty body": error(409),
    "400": error(400, {"message": "Invalid request", "errors": {"where": ["bad"]}}),
    "400 out of bounds": error(400, {"message": "Invalid request", "errors": {"offset": ["out of bounds for this shape"]}}),
    "401": error(401, {"message": "Unauthorized - Invalid API secret"}),
    "404": error(404),
    "429 + Retry-After": error(429, None, **{"retry-after": "7"}),
    "500": error(500, {"error": "Internal server error"}),
    "503 + Retry-After": error(503, {"message": "busy"}, **{"retry-after": "5"}),
    "missing electric-offset": lambda log: ok(log, [INSERT], drop=(wire.H_OFFSET,)),
    "malformed body": lambda log: Response(200, dict(ok(log, []).headers), b'[{"key": '),
    "stale (expired handle)": lambda log: ok(log, [INSERT], handle=OLD),
    "handle changed, no 409": lambda log: ok(log, [INSERT], handle=H2),
    "offset went backwards": lambda log: ok(log, [INSERT], offset="-1" if log.offset == "-1" else "0_0"
                                             if log.offset != "0_0" else "-1"),
}

# Outcomes: "stage"/"publish"/None for the commit, or an exception class; then what the next request holds.
STAGE, PUBLISH, NOTHING = "stage", "publish", None
RESTART = {"offset": "-1", "cache-buster": True}  # after a 409: from the start, with a cache buster
SAME = "same"  # the next request equals the previous one: resend after backoff
BUST = "bust"  # same position with a new cache buster
HELD = "held"  # a long-poll the server held: asking the same again is right (sync.py guards fast repeats)
TRANSITIONS: dict[tuple[str, str], tuple[object, object]] = {
    ("initial", "data"): (STAGE, {"offset": "0_0", "live": None}),
    ("initial", "data+up-to-date"): (PUBLISH, {"offset": "0_0", "live": "true"}),
    ("initial", "quiet up-to-date"): (PUBLISH, {"offset": "0_inf", "live": "true"}),
    ("initial", "snapshot-end only"): (STAGE, {"offset": "0_0", "live": None}),
    ("initial", "legacy 204"): (ProtocolError, SAME),
    ("initial", "409 with handle"): (NOTHING, RESTART),
    ("initial", "409 without handle"): (NOTHING, RESTART),
    ("initial", "409 empty body"): (NOTHING, RESTART),
    ("initial", "400"): (ShapeError, SAME),
    ("initial", "400 out of bounds"): (NOTHING, RESTART),
    ("initial", "401"): (ShapeError, SAME),
    ("initial", "404"): (ShapeError, SAME),
    ("initial", "429 + Retry-After"): (ServerBusy, SAME),
    ("initial", "500"): (ServerBusy, SAME),
    ("initial", "503 + Retry-After"): (ServerBusy, SAME),
    ("initial", "missing electric-offset"): (ProtocolError, SAME),
    ("initial", "malformed body"): (ProtocolError, SAME),
    ("initial", "stale (expired handle)"): (NOTHING, BUST),
    ("initial", "handle changed, no 409"): (STAGE, {"offset": "0_0", "handle": H2}),
    ("initial", "offset went backwards"): (ProtocolError, SAME),
    ("syncing", "data"): (STAGE, {"offset": "0_1", "live": None}),
    ("syncing", "data+up-to-date"): (PUBLISH, {"offset": "0_1", "live": "true"}),
    ("syncing", "quiet up-to-date"): (PUBLISH, {"offset": "0_0", "live": "true"}),
    ("syncing", "snapshot-end only"): (STAGE, {"offset": "0_1", "live": None}),
    ("syncing", "legacy 204"): (ProtocolError, SAME),
    ("syncing", "409 with handle"): (NOTHING, RESTART),
    ("syncing", "409 without handle"): (NOTHING, RESTART),
    ("syncing", "409 empty body"): (NOTHING, RESTART),
    ("syncing", "400"): (ShapeError, SAME),
    ("syncing", "400 out of bounds"): (NOTHING, RESTART),
    ("syncing", "401"): (ShapeError, SAME),
    ("syncing", "404"): (ShapeError, SAME),
    ("syncing", "429 + Retry-After"): (ServerBusy, SAME),
    ("syncing", "500"): (ServerBusy, SAME),
    ("syncing", "503 + Retry-After"): (ServerBusy, SAME),
    ("syncing", "missing electric-offset"): (ProtocolError, SAME),
    ("syncing", "malformed body"): (ProtocolError, SAME),
    ("syncing", "stale (expired handle)"): (NOTHING, BUST),
    ("syncing", "handle changed, no 409"): (ProtocolError, SAME),
    ("syncing", "offset went backwards"): (ProtocolError, SAME),
    ("live", "data"): (STAGE, {"offset": "50_0", "live": "true", "cursor": "120"}),
    ("live", "data+up-to-date"): (PUBLISH, {"offset": "50_0", "live": "true", "cursor": "120"}),
    ("live", "quiet up-to-date"): (NOTHING, {"offset": "0_inf", "live": "true", "cursor": "120"}),
    ("live", "snapshot-end only"): (NOTHING, {"offset": "50_0", "live": "true"}),
    ("live", "legacy 204"): (NOTHING, HELD),
    ("live", "409 with handle"): (NOTHING, RESTART),
    ("live", "409 without handle"): (NOTHING, RESTART),
    ("live", "409 empty body"): (NOTHING, RESTART),
    ("live", "400"): (ShapeError, SAME),
    ("live", "400 out of bounds"): (NOTHING, RESTART),
    ("live", "401"): (ShapeError, SAME),
    ("live", "404"): (ShapeError, SAME),
    ("live", "429 + Retry-After"): (ServerBusy, SAME),
    ("live", "500"): (ServerBusy, SAME),
    ("live", "503 + Retry-After"): (ServerBusy, SAME),
    ("live", "missing electric-offset"): (ProtocolError, SAME),
    ("live", "malformed body"): (ProtocolError, SAME),
    ("live", "stale (expired handle)"): (NOTHING, BUST),
    ("live", "handle changed, no 409"): (ProtocolError, SAME),
    ("live", "offset went backwards"): (ProtocolError, SAME),
}


def test_the_table_is_complete() -> None:
    assert set(TRANSITIONS) == {(phase, kind) for phase in PHASES for kind in RESPONSES}


@pytest.mark.guarantee("R5")
@pytest.mark.parametrize(("phase", "kind"), sorted(TRANSITIONS))
def test_transition(phase: str, kind: str) -> None:
    outcome, expected = TRANSITIONS[(phase, kind)]
    log = make_log(phase)
    before = log.next_request()
    response = RESPONSES[kind](log)
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            log.receive(response)
        commit = None
    else:
        commit = log.receive(response)
        if outcome is None:
            assert commit is None
        else:
            assert commit is not None
            assert commit.up_to_date is (outcome == PUBLISH)
            assert commit.refetch is (phase == "initial")
            assert commit.checkpoint.up_to_date is (outcome == PUBLISH)
    after = log.next_request()
    params = dict(after.params)
    if expected in (SAME, HELD):
        assert after == before  # errors never move the position (R5: the caller backs off)
    elif expected == BUST:
        assert params.get("cache-buster") not in (None, dict(before.params).get("cache-buster"))
        assert params["offset"] == dict(before.params)["offset"]
    else:
        assert isinstance(expected, dict)
        for name, value in expected.items():
            if value is True:
                assert name in params
            else:
                assert params.get(name) == value, (name, params)
        assert after != before  # every loop-back changes the request (R5)
    if expected is RESTART:
        assert after.live is False
        assert params.get("handle") == (H2 if "with handle" in kind else None)
        if phase != "initial":
            assert params["expired_handle"] == H


def test_non_live_response_that_does_not_move_is_an_error() -> None:
    log = make_log("syncing")
    with pytest.raises(ProtocolError, match="did not advance"):
        log.receive(ok(log, [INSERT], offset="0_0"))


def test_stale_retries_are_bounded() -> None:
    log = make_log("syncing")
    for _ in range(3):
        assert log.receive(ok(log, [INSERT], handle=OLD)) is None
    with pytest.raises(ProtocolError, match="expired shape handle"):
        log.receive(ok(log, [INSERT], handle=OLD))


def test_must_refetch_then_new_snapshot_is_a_refetch_commit() -> None:
    log = make_log("live")
    log.receive(RESPONSES["409 with handle"](log))
    commit = log.receive(ok(log, [INSERT], handle=H2))
    assert commit is not None and commit.refetch and commit.checkpoint.handle == H2
    assert commit.checkpoint.schema == SCHEMA


def test_resume_from_staging_publishes_at_next_up_to_date() -> None:
    log = ShapeLog(SHAPE, Checkpoint(H, "0_1", None, SCHEMA, up_to_date=False))
    commit = log.receive(ok(log, [UTD], offset="0_inf") if False else Response(
        200, {wire.H_HANDLE: H, wire.H_OFFSET: "0_inf", wire.H_SCHEMA: json.dumps(SCHEMA)}, json.dumps([UTD]).encode()
    ))
    assert commit is not None and commit.up_to_date and not commit.changes and not commit.refetch


def test_live_requests_echo_the_cursor_and_sort_params() -> None:
    log = make_log("live")
    request = log.next_request()
    names = [name for name, _ in request.params]
    assert names == sorted(names)
    assert dict(request.params)["cursor"] == "100"
    assert request.live


def test_shape_params_in_request() -> None:
    shape = Shape("public.items", where="a = $1 AND b = $2", params={"2": "y", "1": "x"}, columns=("id", "My Col"),
                  replica="full")
    params = dict(ShapeLog(shape).next_request().params)
    assert params["params[1]"] == "x" and params["params[2]"] == "y"
    assert params["columns"] == '"id","My Col"'
    assert params["replica"] == "full" and params["table"] == "public.items"
    assert shape.local_name == "items"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"table": ""},
        {"table": "a.b.c"},
        {"table": "items", "replica": "partial"},
        {"table": "items", "where": "a = $1", "params": {"2": "x"}},
        {"table": "items", "params": {"1": "x"}},
        {"table": "items", "columns": ()},
    ],
)
def test_bad_shapes_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Shape(**kwargs)


@pytest.mark.guarantee("R8")
def test_definition_binds_every_server_side_field() -> None:
    base = Shape("items", where="a = $1", params={"1": "x"})
    variants = [
        Shape("other", where="a = $1", params={"1": "x"}),
        Shape("items", where="a = $1", params={"1": "y"}),
        Shape("items", where="a <> $1", params={"1": "x"}),
        Shape("items", where="a = $1", params={"1": "x"}, columns=("id",)),
        Shape("items", where="a = $1", params={"1": "x"}, replica="full"),
    ]
    assert len({base.definition(), *(v.definition() for v in variants)}) == 6
    assert Shape("ITEMS", where="a = $1", params={"1": "x"}).definition() == base.definition()
    assert Shape("items", where="a = $1", params={"1": "x"}, name="local").definition() == base.definition()


def test_ahead_hears_of_a_snapshot_chunk_once_its_headers_are_accepted_and_before_it_is_validated() -> None:
    # What the sync loop converts ahead (replica.fast): only bodies receive may take as a snapshot chunk.
    big = [INSERT] * 400

    def heard(log: ShapeLog, response: Response) -> list[tuple[bytes, object]]:
        calls: list[tuple[bytes, object]] = []
        try:
            log.receive(response, ahead=lambda body, table: calls.append((body, table)))
        except ProtocolError:
            pass
        return calls

    initial, syncing, live = make_log("initial"), make_log("syncing"), make_log("live")
    fresh = ok(initial, big)
    assert len(fresh.body) >= 16 * 1024
    [(body, table)] = heard(initial, fresh)  # the schema from the header: the log had none yet
    assert body is fresh.body and table == TableSchema.from_electric(SCHEMA) and initial.table == table
    assert len(heard(syncing, ok(syncing, big, drop=(wire.H_SCHEMA,)))) == 1  # the log's own schema
    assert heard(make_log("syncing"), ok(make_log("syncing"), [INSERT])) == []  # too small to be a chunk
    assert heard(live, ok(live, big)) == []  # a live answer is changes
    assert heard(make_log("initial"), Response(409, fresh.headers, fresh.body)) == []
    bad = make_log("syncing")
    assert heard(bad, ok(bad, [*big, {"key": 5}], offset="0_1")) != [] and bad.offset == "0_0"  # then refused
    broken = make_log("initial")
    assert heard(broken, Response(200, {**fresh.headers, wire.H_SCHEMA: "{"}, fresh.body)) == []  # headers first
    typed = ShapeLog(Shape("items", types={"id": "text"}))
    [(_, table)] = heard(typed, ok(typed, big))
    assert table.columns[0].declared_type == "TEXT"  # read with the shape's own column types


@pytest.mark.parametrize(("where", "tables"), [
    ("project_id IN (SELECT project_id FROM memberships WHERE user_id = $1) OR owner = $1", ("memberships",)),
    ('a IN (select x from public . "Team ""A""" where y IN (SELECT z FROM s2.t3)) AND b IN '
     '(SELECT x FROM public."Team ""A""")', ('public."Team ""A"""', "s2.t3")),
    ("(a, b) IN (SELECT x, y FROM pairs)", ("pairs",)),
    ("note = 'select x from decoys' AND a IN (SELECT id FROM real_one)", ("real_one",)),
    ("note = 'it''s from here, select'", ()),
    ("a = 1", ()),
    (None, ()),
])
def test_the_tables_a_subquery_shape_depends_on(where: str | None, tables: tuple[str, ...]) -> None:
    """``replica status`` names them: their changes move the shape's rows in and out."""
    assert subquery_tables(where) == tables
    assert Shape("t", where=where).subquery == bool(tables)
