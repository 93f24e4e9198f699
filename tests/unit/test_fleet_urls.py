"""The URLs a fleet shares behind a caching proxy: replicas at one position send one URL (no
per-replica value in it), and a group's probe names the LSN it needs, so a cached catch-up at the same
position never answers a newer question."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from replica.protocol import Checkpoint, Shape, ShapeLog, wire

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
