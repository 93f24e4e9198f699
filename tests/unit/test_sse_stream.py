"""SSE in the sans-IO core and the fallback policy (issue 20): requests, stream heads, batches and
where they end, bursts, streams that end mid-batch, and when a shape gives up on SSE."""

from __future__ import annotations

import json
from typing import Any

import pytest

from replica import ConfigError, Replica
from replica.errors import ProtocolError
from replica.protocol import Checkpoint, Response, Shape, ShapeLog, wire
from replica.protocol import stream as stream_module
from replica.protocol.messages import parse_body
from replica.protocol.sse import encode_event
from replica.protocol.stream import LiveStream, batch_end
from replica.sync.stream import MAX_FAILED, LiveMode

SCHEMA = {"id": {"type": "int4", "pk_index": 0, "not_null": True}, "title": {"type": "text"}}
SHAPE = Shape("items")


def live_log(offset: str = "0_inf") -> ShapeLog:
    return ShapeLog(SHAPE, Checkpoint("h1", offset, "100", SCHEMA, up_to_date=True), sse=True)


def head(offset: str = "0_inf", **extra: str) -> Response:
    headers = {wire.H_HANDLE: "h1", wire.H_OFFSET: offset, wire.H_CURSOR: "120", "content-type": "text/event-stream",
               **extra}
    return Response(200, headers)


def change(i: int, lsn: int, op: int, operation: str = "insert") -> bytes:
    message = {"key": f'"public"."items"/"{i}"', "value": {"id": str(i), "title": "t"},
               "headers": {"operation": operation, "relation": ["public", "items"], "lsn": str(lsn), "op_position": op}}
    return encode_event(json.dumps(message).encode())


def up_to_date(lsn: int) -> bytes:
    return encode_event(json.dumps({"headers": {"control": "up-to-date", "global_last_seen_lsn": str(lsn)}}).encode())


def test_only_live_requests_ask_for_an_event_stream() -> None:
    catching_up = ShapeLog(SHAPE, Checkpoint("h1", "0_3", None, SCHEMA, up_to_date=False), sse=True)
    assert not catching_up.next_request().sse
    assert wire.P_LIVE_SSE not in dict(catching_up.next_request().params)
    request = live_log().next_request()
    assert request.sse and request.live
    params = dict(request.params)
    assert params[wire.P_LIVE_SSE] == params[wire.P_EXPERIMENTAL_LIVE_SSE] == params[wire.P_LIVE] == "true"
    assert [k for k, _ in request.params] == sorted(k for k, _ in request.params)  # sorted, for CDN collapsing
    polling = live_log()
    polling.sse = False
    assert not polling.next_request().sse and wire.P_LIVE_SSE not in dict(polling.next_request().params)


def test_one_commit_per_up_to_date_at_the_batch_s_own_end() -> None:
    log = live_log()
    live = LiveStream.open(log, head())
    assert live is not None
    body = change(1, 500, 0) + change(2, 500, 2) + up_to_date(500) + b": keep-alive\n\n" + change(3, 600, 0)
    (first,) = live.feed(body)
    assert first.up_to_date and [c.key for c in first.changes] == ['"public"."items"/"1"', '"public"."items"/"2"']
    assert first.checkpoint.offset == "500_2" and first.checkpoint.cursor == "120"  # the last change's own offset
    assert live.comments == 1 and live.batches == 1
    assert live.feed(up_to_date(650)) and log.offset == "650_0"  # up-to-date ahead of the change: <lsn>_0 wins
    assert live.close(complete=True) is None


def test_a_stream_cut_mid_batch_commits_nothing_of_it() -> None:
    log = live_log()
    live = LiveStream.open(log, head())
    assert live is not None
    assert live.feed(change(1, 500, 0) + change(2, 500, 2)[:20]) == []
    assert live.close(complete=False) is None
    assert log.offset == "0_inf"  # the reconnect asks for the whole batch again


def test_an_answer_with_data_at_once_but_no_up_to_date_is_staged_at_its_offset() -> None:
    """Electric writes a burst bigger than a chunk and closes: the whole answer reaches its electric-offset."""
    log = live_log()
    live = LiveStream.open(log, head("700_4"))
    assert live is not None
    assert live.feed(change(1, 700, 0) + change(2, 700, 2)) == []
    staged = live.close(complete=True)
    assert staged is not None and not staged.up_to_date and staged.checkpoint.offset == "700_4"
    assert log.staged and log.offset == "700_4"


def test_a_held_stream_ending_mid_batch_drops_the_batch() -> None:
    log = live_log()
    live = LiveStream.open(log, head())  # held: its electric-offset is where it started
    assert live is not None
    live.feed(change(1, 700, 0))
    assert live.close(complete=True) is None and log.offset == "0_inf"


def test_a_burst_past_stage_bytes_is_staged_at_its_last_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "STAGE_BYTES", 300)
    log = live_log()
    live = LiveStream.open(log, head())
    assert live is not None
    commits = live.feed(b"".join(change(i, 800, 2 * i) for i in range(1, 4)))
    assert commits and not commits[0].up_to_date and commits[0].checkpoint.offset.startswith("800_")
    *_, published = live.feed(change(9, 900, 0) + up_to_date(900))
    assert published.up_to_date and published.checkpoint.offset == "900_0" and not log.staged


def test_batch_end_takes_the_largest_position_the_batch_reaches() -> None:
    def messages(*events: bytes) -> Any:
        return parse_body(b"[" + b",".join(e.removeprefix(b"data: ").rstrip(b"\n") for e in events) + b"]")

    assert batch_end(messages(change(1, 500, 4), up_to_date(500))) == wire.Offset(500, 4)
    assert batch_end(messages(change(1, 500, 4), up_to_date(512))) == wire.Offset(512, 0)
    assert batch_end(messages(up_to_date(512)), known="600_2") == wire.Offset(600, 2)
    assert batch_end(messages()) == wire.BEFORE_ALL
    with pytest.raises(ProtocolError, match="up-to-date must be the last"):
        batch_end(messages(up_to_date(1), change(1, 2, 0)))


def test_the_offset_never_moves_back() -> None:
    log = live_log("900_6")
    live = LiveStream.open(log, head("900_6"))
    assert live is not None
    (commit,) = live.feed(change(1, 900, 8) + up_to_date(900))  # <lsn>_0 is behind: the change's offset wins
    assert commit.checkpoint.offset == "900_8"


def test_stream_heads_are_checked() -> None:
    with pytest.raises(ProtocolError, match="electric-cursor"):
        LiveStream.open(live_log(), Response(200, {wire.H_HANDLE: "h1", wire.H_OFFSET: "0_inf"}))
    with pytest.raises(ProtocolError, match="without a 409"):
        LiveStream.open(live_log(), head(**{wire.H_HANDLE: "other"}))
    with pytest.raises(ProtocolError, match="went backwards"):
        LiveStream.open(live_log("5_0"), head("4_0"))
    not_live = ShapeLog(SHAPE, Checkpoint("h1", "0_3", None, SCHEMA, up_to_date=False), sse=True)
    with pytest.raises(ProtocolError, match="not live"):
        not_live.open_stream(head())


def test_a_stale_replay_of_an_expired_handle_is_ignored_and_busted() -> None:
    log = live_log()
    log.expired_handle = "old"
    assert LiveStream.open(log, head(**{wire.H_HANDLE: "old"})) is None
    assert wire.P_CACHE_BUSTER in dict(log.next_request().params)


class Host:
    def __init__(self) -> None:
        self.states: dict[str, Any] = {}
        self.events: list[str] = []

    def _set(self, name: str, **changes: Any) -> None:
        self.states.update(changes)

    def _observe(self, kind: str, name: str, **fields: Any) -> None:
        self.events.append(kind)


def test_three_failed_streams_in_a_row_fall_back_with_jittered_waits() -> None:
    host = Host()
    mode = LiveMode("items", host, sse=True, silence=30.0, rng=lambda: 1.0)
    assert mode.sse and host.states["live_mode"] == "sse"
    assert mode._ended(0.2, silent=False, delivered=False) == pytest.approx(0.2)  # min(5, 0.1 * 2**1)
    assert mode._ended(0.2, silent=True, delivered=False) == pytest.approx(0.4)
    assert mode._ended(0.2, silent=False, delivered=False) == 0.0
    assert mode.failed == MAX_FAILED and not mode.sse and host.states["live_mode"] == "sse-fallback"
    assert host.events == ["fallback"]


def test_healthy_streams_reset_the_count_and_a_short_one_with_data_is_no_failure() -> None:
    mode = LiveMode("items", Host(), sse=True, silence=30.0, rng=lambda: 0.5)
    mode._ended(0.1, silent=False, delivered=False)
    mode._ended(0.1, silent=False, delivered=True)  # Electric closes every answer that had data at once
    assert mode.failed == 1
    mode._ended(60.0, silent=False, delivered=False)  # a stream that lived its minute
    assert mode.failed == 0 and mode.sse
    mode._ended(0.1, silent=False, delivered=False)
    mode._ended(5.0, silent=False, delivered=False, broken=True)  # a long stream cut by the network proves nothing
    assert mode.failed == 1
    mode._ended(0.2, silent=False, delivered=False, broken=True)  # a short broken one fails
    assert mode.failed == 2
    long_poll = LiveMode("items", Host(), sse=False, silence=30.0)
    assert not long_poll.sse and long_poll.mode == "long-poll"


def test_bad_live_options_are_config_errors(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="live: must be one of long-poll, sse"):
        Shape("items", live="websocket")
    with pytest.raises(ConfigError, match="live: must be one of"):
        Replica(tmp_path / "a.db", "http://x/v1/shape", SHAPE, live="poll")
    with pytest.raises(ConfigError, match="sse_silence"):
        Replica(tmp_path / "a.db", "http://x/v1/shape", SHAPE, live="sse", sse_silence=0)
    assert Shape("items", live="sse").definition() == Shape("items").definition()  # not part of the definition (R8)
