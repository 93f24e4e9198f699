"""Live changes over SSE reach the same tables as the log says, however the stream is read (R4),
and whatever it re-delivers after a reconnect from ``<lsn>_0`` (R3), issue 20."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracle import expected, local

from replica.protocol import Response, Shape, ShapeLog, wire
from replica.protocol.stream import LiveStream
from replica.store.store import Store
from replica.testing import FakeElectric

COLUMNS = {"id": {"type": "int4", "pk_index": 0, "not_null": True}, "title": {"type": "text"}}

# One transaction: a list of (kind, id, title); kinds apply only where they make sense at that moment.
transactions = st.lists(
    st.lists(st.tuples(st.sampled_from(["insert", "update", "delete", "rekey"]), st.integers(1, 12),
                       st.text(max_size=12)), min_size=1, max_size=5),
    min_size=1, max_size=4,
)


def run_transaction(fake: FakeElectric, ops: list[tuple[str, int, str]]) -> None:
    with fake.transaction() as tx:
        for kind, i, title in ops:
            present = {int(r["id"]) for r in fake.rows("items").values()}
            if kind == "insert" and i not in present:
                tx.insert("items", {"id": str(i), "title": title})
            elif kind == "update" and i in present:
                tx.update("items", {"id": str(i), "title": title})
            elif kind == "delete" and i in present:
                tx.delete("items", {"id": str(i)})
            elif kind == "rekey" and i in present and i + 50 not in present:
                tx.update("items", {"id": str(i)}, new={"id": str(i + 50)})


def catch_up(fake: FakeElectric, log: ShapeLog, store: Store) -> None:
    """Non-live requests until the first up-to-date is published."""
    while True:
        reply = fake.respond("GET", "/v1/shape?" + urlencode(log.next_request().params))
        commit = log.receive(Response(reply.status, reply.headers, reply.body))
        if commit is not None:
            store.apply(commit)
        if log.live:
            return


def follow_sse(fake: FakeElectric, log: ShapeLog, store: Store, data: Any, *, redeliver: bool) -> None:
    """Live SSE requests, each answer read in random pieces, until an answer brings nothing new.

    With ``redeliver``, after a publish the position goes back to ``<lsn>_0`` of its last
    transaction (the official client's rule), so the next answer sends its later ops again.
    """
    rewinds = 0
    for _ in range(200):
        request = log.next_request()
        assert request.sse and (wire.P_LIVE_SSE, "true") in request.params
        reply = fake.respond("GET", "/v1/shape?" + urlencode(request.params))
        assert reply.status == 200 and reply.headers["content-type"] == "text/event-stream"
        stream = LiveStream.open(log, Response(reply.status, reply.headers))
        assert stream is not None
        body = reply.body
        points = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
        commits = []
        for start, end in zip([0, *points], [*points, len(body)], strict=True):
            commits.extend(stream.feed(body[start:end]))
        last = stream.close(complete=True)
        commits.extend([last] if last is not None else [])
        for commit in commits:
            store.apply(commit)
        if redeliver and rewinds < 3 and commits and commits[-1].up_to_date and data.draw(st.booleans()):
            rewinds += 1
            log.offset = f"{wire.Offset.parse(log.offset).tx}_0"
        elif not body:
            return
    raise AssertionError("the stream never caught up")


@pytest.mark.guarantee("R4")
@given(seed=st.integers(0, 8), txs=st.lists(transactions, min_size=1, max_size=3), chunk=st.integers(60, 5000),
       redeliver=st.booleans(), data=st.data())
def test_sse_batches_read_in_any_pieces_give_the_log_s_tables(seed: int, txs: list, chunk: int, redeliver: bool,
                                                               data: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fake = FakeElectric(chunk_bytes=chunk, long_poll_timeout=0.001)
        fake.create_table("items", COLUMNS, rows=[{"id": str(i), "title": f"t{i}"} for i in range(1, seed + 1)])
        db = Path(tmp) / "sse.db"
        with Store(db) as store:
            log = ShapeLog(Shape("items"), None, sse=True)
            catch_up(fake, log, store)
            for batch in txs:
                for ops in batch:
                    run_transaction(fake, ops)
                follow_sse(fake, log, store, data, redeliver=redeliver)
                assert local(db, "items", ("id",)) == expected(fake, "items")
                assert not log.staged


@pytest.mark.guarantee("R3")
def test_a_redelivered_transaction_tail_changes_nothing(tmp_path: Path) -> None:
    """Reconnecting at ``<lsn>_0`` re-sends ops 2, 4, … of that transaction: applied again, same rows."""
    fake = FakeElectric(long_poll_timeout=0.001)
    fake.create_table("items", COLUMNS, rows=[{"id": "1", "title": "a"}, {"id": "2", "title": "b"}])
    with Store(tmp_path / "r.db") as store:
        log = ShapeLog(Shape("items"), None, sse=True)
        catch_up(fake, log, store)
        with fake.transaction() as tx:
            tx.insert("items", {"id": "3", "title": "c"})
            tx.update("items", {"id": "1", "title": "A"})
            tx.delete("items", {"id": "2"})
            tx.update("items", {"id": "3"}, new={"id": "4"})
        assert tx.lsn is not None
        reply = fake.respond("GET", "/v1/shape?" + urlencode(log.next_request().params))
        stream = LiveStream.open(log, Response(reply.status, reply.headers))
        assert stream is not None
        (first,) = stream.feed(reply.body)
        assert first.up_to_date and first.checkpoint.offset == f"{tx.lsn}_7"  # the last op's own offset
        store.apply(first)
        before = local(tmp_path / "r.db", "items", ("id",))
        log.offset = f"{tx.lsn}_0"  # as the official client would resume
        reply = fake.respond("GET", "/v1/shape?" + urlencode(log.next_request().params))
        stream = LiveStream.open(log, Response(reply.status, reply.headers))
        assert stream is not None
        (again,) = stream.feed(reply.body)
        assert [c.operation for c in again.changes] == ["update", "delete", "delete", "insert"]  # ops 2..7
        applied = store.apply(again)
        assert applied.published and store.checkpoint(Shape("items")).offset == f"{tx.lsn}_7"
        assert local(tmp_path / "r.db", "items", ("id",)) == before == expected(fake, "items")
