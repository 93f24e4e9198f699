"""The URLs a fleet shares behind a caching proxy: replicas at one position send one URL (no
per-replica value in it), and a group's probe names the LSN it needs, so a cached catch-up at the same
position never answers a newer question."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from replica.protocol import Checkpoint, Response, Shape, ShapeLog, wire

SHAPE = Shape("items", where="id > $1", params={"1": "5"}, columns=["id", "title"])
SCHEMA = {"id": {"type": "int4", "pk_index": 0}, "title": {"type": "text"}}
H = "1-100"


@given(nonces=st.lists(st.text(alphabet="0123456789abcdef", min_size=1, max_size=8), min_size=2, max_size=5),
       live=st.booleans(), need=st.integers(min_value=0, max_value=2**64 - 1))
def test_replicas_at_one_position_send_one_url(nonces: list[str], live: bool, need: int) -> None:
    checkpoint = Checkpoint(H, "24003522_0", "67929040", SCHEMA, up_to_date=live)
    logs = [ShapeLog(SHAPE, checkpoint, nonce=nonce) for nonce in nonces]
    assert len({log.next_request() for log in logs}) == 1
    assert len({log.probe_request(need) for log in logs}) == 1
    request = logs[0].next_request()
    assert [name for name, _ in request.params] == sorted(name for name, _ in request.params)


def test_a_probe_names_the_lsn_it_needs_and_nothing_live() -> None:
    log = ShapeLog(SHAPE, Checkpoint(H, "24003522_0", "67929040", SCHEMA, up_to_date=True))
    first, second = log.probe_request(24005163), log.probe_request(24008331)
    assert first is not None and second is not None and first != second
    params = dict(first.params)
    assert params[wire.P_CACHE_BUSTER] == "lsn-24005163"
    assert params[wire.P_OFFSET] == "24003522_0" and params[wire.P_HANDLE] == H
    assert not {wire.P_LIVE, wire.P_CURSOR, wire.P_LIVE_SSE} & set(params)
    assert not first.live
    assert [name for name, _ in first.params] == sorted(name for name, _ in first.params)
    assert log.probe_request(24005163) == first  # the same question, the same URL


def _refetch(log: ShapeLog, new_handle: str | None) -> dict[str, str]:
    headers = {} if new_handle is None else {wire.H_HANDLE: new_handle}
    assert log.receive(Response(409, headers, b'[{"headers":{"control":"must-refetch"}}]')) is None
    return dict(log.next_request().params)


def test_a_fleet_refetches_after_a_409_with_one_url_and_a_stale_replay_with_its_own() -> None:
    checkpoint = Checkpoint(H, "24003522_0", "67929040", SCHEMA, up_to_date=True)
    logs = [ShapeLog(SHAPE, checkpoint, nonce=nonce) for nonce in ("a1", "b2", "c3")]
    before = logs[0].next_request()
    after = [_refetch(log, "2-200") for log in logs]
    assert all(params == after[0] for params in after)  # one origin request for the fleet, through a proxy
    assert after[0][wire.P_OFFSET] == "-1" and after[0][wire.P_HANDLE] == "2-200"
    assert after[0][wire.P_CACHE_BUSTER] == "409-2-200" and after[0][wire.P_EXPIRED_HANDLE] == H
    assert dict(before.params) != after[0]
    # A cache replays the expired handle's answer: each replica asks again with a URL no cache has seen.
    stale = Response(200, {wire.H_HANDLE: H, wire.H_OFFSET: "0_0", wire.H_SCHEMA: json.dumps(SCHEMA)}, b"[]")
    for log in logs:
        assert log.receive(stale) is None
    busters = {dict(log.next_request().params)[wire.P_CACHE_BUSTER] for log in logs}
    assert len(busters) == 3 and "409-2-200" not in busters


def test_a_409_without_a_new_handle_or_naming_the_same_one_still_changes_the_url() -> None:
    log = ShapeLog(SHAPE, Checkpoint(H, "24003522_0", "67929040", SCHEMA, up_to_date=True), nonce="a1")
    first = _refetch(log, None)
    assert first[wire.P_CACHE_BUSTER].startswith("a1-") and wire.P_HANDLE not in first
    log = ShapeLog(SHAPE, Checkpoint("2-200", "-1", None, None, up_to_date=False), nonce="a1")
    asked = dict(log.next_request().params)
    again = _refetch(log, "2-200")  # the handle we asked with, named again: not the same URL (R5)
    assert again != asked and again[wire.P_CACHE_BUSTER].startswith("a1-")
