"""The snapshot fast path (replica.protocol.snapshot) accepts exactly what the careful parser accepts.

``ShapeLog.receive`` validates a big body of whole-row inserts with ``parse_whole_inserts`` and
hands it on as an ``InsertBody``; anything else goes through ``messages.parse_body``. Whatever the body
— valid, or broken in one of many ways — both routes give the same outcome: the same error
message, or commits with the same changes, up-to-date flag and position.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from replica.errors import ReplicaError
from replica.protocol import InsertBody, Response, Shape, ShapeLog, wire
from replica.protocol import shapelog as protocol
from replica.protocol import snapshot as inserts
from replica.protocol.messages import header_list

SCHEMA = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "title": {"type": "text"}, "n": {"type": "int4"}}
SHAPE = Shape("items")


def insert(i: int, title: Any = "t", n: Any = "1") -> dict[str, Any]:
    return {"key": f'"public"."items"/"{i}"', "value": {"id": str(i), "title": title, "n": n},
            "headers": {"operation": "insert", "relation": ["public", "items"]}}


UP_TO_DATE = {"headers": {"control": "up-to-date"}}
HEAD = '"public"."items"/"'
SNAPSHOT_END = {"headers": {"control": "snapshot-end", "xmin": "1", "xmax": "2", "xip_list": []}}


def _mutate(messages: list[Any], kind: str, at: int) -> None:
    m = messages[at]
    if "value" not in m or not isinstance(m.get("key"), str):
        m = insert(at)  # an earlier mutation made this one something else: change a fresh insert
        messages.insert(at, m)
    if kind == "missing column":
        m["value"].pop("n", None)
    elif kind == "extra column":
        m["value"]["x"] = "1"
    elif kind == "number value":
        m["value"]["title"] = 5
    elif kind == "object value":
        m["value"]["title"] = {"a": "b"}
    elif kind == "null value":
        m["value"]["title"] = None
    elif kind == "update":
        m["headers"]["operation"] = "update"
    elif kind == "unknown operation":
        m["headers"]["operation"] = "upsert"
    elif kind == "wrong key":
        m["key"] = '"public"."items"/"999999"'
    elif kind == "key not a string":
        m["key"] = 7
    elif kind == "no value":
        m.pop("value")
    elif kind == "control in the middle":
        messages.insert(at, UP_TO_DATE)
    elif kind == "snapshot-end":
        messages.insert(at, SNAPSHOT_END)
    elif kind == "event":
        messages.insert(at, {"headers": {"event": "move-out", "patterns": []}})
    elif kind == "control not a string":
        messages.insert(at, {"headers": {"control": 1}})
    elif kind == "neither":
        messages.insert(at, {"headers": {}})
    elif kind == "escaped text":
        m["value"]["title"] = 'quote " slash / tab \t é ☃'
    elif kind == "null key column":
        m["value"]["id"] = None
    elif kind == "NUL in key":  # the key check joins keys with NUL: one inside a key must not pass
        m["key"] += "\x00" + HEAD + (m["value"]["id"] or "0") + '"'  # an earlier mutation may have nulled it
    elif kind == "NUL in key column":
        m["value"]["id"] = (m["value"]["id"] or "") + "\x00"


KINDS = ["none", "missing column", "extra column", "number value", "object value", "null value", "update",
         "unknown operation", "wrong key", "key not a string", "no value", "control in the middle", "snapshot-end",
         "event", "control not a string", "neither", "escaped text", "null key column", "NUL in key",
         "NUL in key column"]


# Titles that end in the text a cut looks for (replica.cuts), so a cut may fall inside a string.
TITLES = ["a", "", "x y", "x},{", "}, {", '},{"key"']
# Between messages: what Electric and json.dumps send, other JSON whitespace, and what JSON does not allow.
SEPARATORS = [b"},{", b"}, {", b"}\n,\r\n\t{", b"}\x0b,{", b"},\x0c{"]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(1, 30))
    messages: list[Any] = [insert(i, draw(st.sampled_from(TITLES))) for i in range(count)]
    for kind in draw(st.lists(st.sampled_from(KINDS), max_size=2)):
        if kind != "none":
            _mutate(messages, kind, draw(st.integers(0, len(messages) - 1)))
    if draw(st.booleans()):
        messages.append(UP_TO_DATE)
    raw = json.dumps(messages, separators=(",", ":")).encode()
    raw = raw.replace(b'},{"', draw(st.sampled_from(SEPARATORS)) + b'"', draw(st.integers(0, count)))
    ending = draw(st.sampled_from(["whole", "garbage first", "cut short"]))
    if ending == "garbage first":
        return b"garbage" + raw[: draw(st.integers(0, 50))]
    if ending == "cut short":
        return raw[: -draw(st.integers(1, 20))]
    return raw


def outcome(raw: bytes, monkeypatch: pytest.MonkeyPatch, fast: bool, piece: int = inserts.PIECE) -> tuple[Any, ...]:
    monkeypatch.setattr(protocol, "WHOLE_BODY_BYTES", 0 if fast else 1 << 60)
    monkeypatch.setattr(inserts, "PIECE", piece)
    log = ShapeLog(SHAPE, None)
    log.next_request()
    headers = {wire.H_HANDLE: "h-1", wire.H_OFFSET: "0_0", wire.H_SCHEMA: json.dumps(SCHEMA)}
    try:
        commit = log.receive(Response(200, headers, raw))
    except ReplicaError as exc:
        return ("error", type(exc).__name__, str(exc))
    if commit is None:
        return ("none", log.offset)
    changes = commit.changes.changes() if isinstance(commit.changes, InsertBody) else list(commit.changes)
    return ("commit", changes, commit.up_to_date, commit.checkpoint)


def _dumps(messages: list[Any]) -> bytes:
    return json.dumps(messages, separators=(",", ":")).encode()


@settings(max_examples=500, deadline=None)
@given(raw=bodies(), piece=st.integers(1, 400))
# One message a piece: up-to-date ends a piece but more follow; a wrong key, then a body cut short.
@example(raw=_dumps([insert(0), UP_TO_DATE, insert(1)]), piece=1)
@example(raw=_dumps([{**insert(0), "key": "wrong"}, insert(1)])[:-5], piece=1)
# Keys and key columns that join (with NUL) into the same text, though no key matches its row.
@example(raw=_dumps([{**insert(0), "key": HEAD + 'a"', "value": {"id": "a\x00b", "title": "t", "n": "1"}},
                     {**insert(1), "key": HEAD + 'b"\x00' + HEAD + 'c"', "value": {"id": "c", "title": "t", "n": "1"}}]),
         piece=inserts.PIECE)
def test_fast_and_careful_routes_agree(raw: bytes, piece: int) -> None:
    """Read in pieces of ``piece`` bytes (a message is ~100), the fast route still agrees."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert outcome(raw, monkeypatch, fast=True, piece=piece) == outcome(raw, monkeypatch, fast=False)


def test_a_body_of_whole_inserts_is_handed_on_as_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = json.dumps([insert(i) for i in range(3000)] + [SNAPSHOT_END, UP_TO_DATE]).encode()
    assert len(raw) >= protocol.WHOLE_BODY_BYTES
    log = ShapeLog(SHAPE, None)
    log.next_request()
    headers = {wire.H_HANDLE: "h-1", wire.H_OFFSET: "0_0", wire.H_SCHEMA: json.dumps(SCHEMA)}
    commit = log.receive(Response(200, headers, raw))
    assert commit is not None and commit.up_to_date
    assert isinstance(commit.changes, InsertBody) and commit.changes.body is raw and commit.changes.count == 3000
    last = commit.changes.changes()[2999]
    assert last[:3] == ("insert", '"public"."items"/"2999"', {"id": "2999", "title": "t", "n": "1"})
    assert header_list(last.headers, "relation") == ["public", "items"]


@pytest.mark.parametrize("title", ["t", "x},{"])
def test_a_body_read_in_pieces_is_still_handed_on_whole(monkeypatch: pytest.MonkeyPatch, title: str) -> None:
    """Cut into ~100 pieces, the body is still one commit; a title that fools the cut only costs a second read."""
    raw = json.dumps([insert(i, title) for i in range(3000)] + [UP_TO_DATE], separators=(",", ":")).encode()
    monkeypatch.setattr(inserts, "PIECE", len(raw) // 100)
    reads: list[int] = []
    decoders = inserts._decoders.__wrapped__(tuple(SCHEMA))

    class Counting:
        def __init__(self, decoder: Any) -> None:
            self.decoder = decoder

        def decode(self, text: bytes) -> Any:
            reads.append(len(text))
            return self.decoder.decode(text)

    monkeypatch.setattr(inserts, "_decoders", lambda columns: tuple(Counting(d) for d in decoders))
    log = ShapeLog(SHAPE, None)
    log.next_request()
    headers = {wire.H_HANDLE: "h-1", wire.H_OFFSET: "0_0", wire.H_SCHEMA: json.dumps(SCHEMA)}
    commit = log.receive(Response(200, headers, raw))
    assert commit is not None and commit.up_to_date and isinstance(commit.changes, InsertBody)
    assert commit.changes.count == 3000 and commit.changes.changes()[2999].value["title"] == title
    if title == "t":
        assert len(reads) >= 100 and max(reads) < len(raw) // 50  # in pieces: none read whole
    else:
        assert len(raw) in reads  # a cut fell inside a title: read whole after all


def test_a_wrong_key_in_a_later_piece_is_named_by_its_index_in_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [insert(i) for i in range(3000)]
    messages[2500]["key"] = '"public"."items"/"999999"'
    raw = json.dumps(messages).encode()
    result = outcome(raw, monkeypatch, fast=True, piece=len(raw) // 100)
    assert result[:2] == ("error", "ProtocolError") and result[2].startswith("message 2500: key")
    assert result == outcome(raw, monkeypatch, fast=False)
