"""The event-stream parser: any split of a valid stream into reads gives the same events (SSE, issue 20)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from replica.protocol.sse import Comment, Event, EventStreamParser, encode_event

# A line of text never holds CR or LF; it may hold anything else, colons and multi-byte UTF-8 included.
line_text = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20)
line_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def streams(draw: Any) -> tuple[bytes, list[Event | Comment]]:
    """A valid event stream (random line ends, comments, multi-line data, ids, types) and what it means."""
    out: list[bytes] = []
    expected: list[Event | Comment] = []
    last_id: str | None = None
    if draw(st.booleans()):
        out.append(b"\xef\xbb\xbf")
    for _ in range(draw(st.integers(0, 8))):
        end = draw(line_ends)
        if draw(st.integers(0, 3)) == 0:
            text = draw(line_text)
            space = draw(st.booleans())
            out.append(b":" + (b" " if space else b"") + text.encode() + end)
            expected.append(Comment(text if space or not text.startswith(" ") else text[1:]))
            continue
        data = draw(st.lists(line_text, min_size=0, max_size=3))
        kind = draw(st.one_of(st.none(), st.text(alphabet="abcxyz-", min_size=1, max_size=6)))
        event_id = draw(st.one_of(st.none(), st.text(alphabet="0123456789_", min_size=0, max_size=6)))
        fields: list[bytes] = []
        if kind is not None:
            fields.append(b"event: " + kind.encode())
        if event_id is not None:
            fields.append(b"id:" + event_id.encode())
            last_id = event_id
        for value in data:
            # "data:x" and "data: x" mean the same; a value starting with a space needs the separator space.
            space = b" " if value.startswith(" ") or draw(st.booleans()) else b""
            fields.append(b"data:" + space + value.encode())
        if draw(st.booleans()):
            fields.append(b"retry: 3000")
        if draw(st.booleans()):
            fields.append(b"unknown-field: ignored")
        out.extend(field + end for field in fields)
        # The blank line that dispatches; after a lone CR an LF would only finish that line end.
        after_cr = out[-1].endswith(b"\r") if out else False
        out.append(draw(st.sampled_from([b"\r\n", b"\r"] if after_cr else [b"\n", b"\r\n", b"\r"])))
        if data:
            expected.append(Event("\n".join(data).encode(), kind or "message", last_id))
    return b"".join(out), expected


def cuts(draw: Any, size: int) -> list[int]:
    return sorted(draw(st.lists(st.integers(0, size), max_size=12)))


def parse_in(stream: bytes, points: list[int]) -> list[Event | Comment]:
    parser = EventStreamParser()
    got: list[Event | Comment] = []
    start = 0
    for point in [*points, len(stream)]:
        got.extend(parser.feed(stream[start:point]))
        start = point
    return got


@given(st.data())
def test_any_split_of_a_stream_gives_the_same_events(data: Any) -> None:
    stream, expected = data.draw(streams())
    assert parse_in(stream, []) == expected
    assert parse_in(stream, cuts(data.draw, len(stream))) == expected
    assert parse_in(stream, list(range(len(stream)))) == expected  # one byte at a time


@given(st.data())
def test_a_stream_cut_mid_event_never_returns_the_cut_event(data: Any) -> None:
    stream, expected = data.draw(streams())
    cut = data.draw(st.integers(0, len(stream)))
    parser = EventStreamParser()
    got = parser.feed(stream[:cut])
    assert got == expected[: len(got)]  # a prefix of the events, nothing invented
    events_before = [e for e in got if isinstance(e, Event)]
    assert len(events_before) <= len([e for e in expected if isinstance(e, Event)])


@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\r" not in b), max_size=5))
def test_encode_event_round_trips(datas: list[bytes]) -> None:
    stream = b"".join(encode_event(d) for d in datas)
    assert [e.data for e in parse_in(stream, []) if isinstance(e, Event)] == datas


def test_electric_keep_alives_and_crlf() -> None:
    parser = EventStreamParser()
    assert parser.feed(b': keep-alive\n\ndata: {"a":1}\r') == [Comment("keep-alive")]
    assert parser.pending
    assert parser.feed(b'\n\r\ndata: x\rdata: y\n\n') == [Event(b'{"a":1}'), Event(b"x\ny")]
    assert not parser.pending


def test_utf8_split_inside_a_character() -> None:
    body = 'data: {"title":"é€😀"}\n\n'.encode()
    parser = EventStreamParser()
    got = [item for i in range(len(body)) for item in parser.feed(body[i : i + 1])]
    assert got == [Event('{"title":"é€😀"}'.encode())]


def test_an_event_without_data_is_dropped_and_id_persists() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"id: 7\nevent: x\n\ndata\n\n") == [Event(b"", "message", "7")]
    assert parser.feed(b"id: a\0b\ndata: 1\n\n") == [Event(b"1", "message", "7")]  # an id with NUL is ignored
    assert parser.feed(b"retry: 10x\nretry: 250\n\n") == [] and parser.retry == 250
