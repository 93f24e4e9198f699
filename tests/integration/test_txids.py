"""Waiting for one's own write: txid_synced / wait_until_txid / GET /txid/{txid}, against the fake.

A transaction is visible once a published commit applied one of its changes, or a published
snapshot contains it (it committed before the snapshot); a wait that starts after the commit,
also after a restart, returns at once; a transaction that touched no synced row never appears.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from test_daemon import Daemon, write_config

from replica import Backoff, Replica, Shape
from replica.testing import FakeElectric, Fault, serve_in_thread

pytestmark = pytest.mark.integration
COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "title": {"type": "text"}}


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


def make_fake() -> FakeElectric:
    fake = FakeElectric(long_poll_timeout=1.0)
    fake.create_table("items", COLUMNS, rows=[{"id": "1", "title": "a"}])
    fake.create_table("other", COLUMNS, rows=[])
    return fake


def write(fake: FakeElectric, table: str = "items", id: int = 2) -> int:
    with fake.transaction() as tx:
        tx.insert(table, {"id": str(id), "title": "mine"})
    assert tx.txid is not None
    return tx.txid


def test_a_wait_that_starts_before_the_write_returns_once_it_is_visible(tmp_path: Path) -> None:
    fake = make_fake()
    earlier = write(fake, "other", 1)  # before the shape exists: its snapshot contains it
    with serve_in_thread(fake) as server, Replica(tmp_path / "a.db", server.url, Shape("items")) as replica:
        assert replica.wait_until_synced(30)
        seen = replica.txid_seen(earlier)  # committed before the snapshot was taken: in it
        assert seen is not None and seen.shapes == ("items",) and seen.lsn is None
        upcoming = earlier + 1
        assert replica.txid_seen(upcoming) is None
        threading.Timer(0.3, write, (fake,)).start()
        started = time.monotonic()
        assert replica.wait_until_txid(str(upcoming), timeout=20)
        assert time.monotonic() - started >= 0.25
        seen = replica.txid_seen(upcoming)
        assert seen is not None and seen.shapes == ("items",) and seen.lsn == fake.lsn
        assert replica.wait_until_txid(upcoming, timeout=0)  # after the commit: at once
        with pytest.raises(ValueError, match="transaction id"):
            replica.wait_until_txid("12x", timeout=0)


def test_a_transaction_that_touched_no_synced_row_times_out(tmp_path: Path) -> None:
    fake = make_fake()
    with serve_in_thread(fake) as server, Replica(tmp_path / "a.db", server.url, Shape("items")) as replica:
        assert replica.wait_until_synced(30)
        elsewhere = write(fake, "other")  # a table no shape syncs
        assert not replica.wait_until_txid(elsewhere, timeout=1.0)


def test_visible_transactions_are_remembered_across_a_restart(tmp_path: Path) -> None:
    fake = make_fake()
    db = tmp_path / "a.db"
    with serve_in_thread(fake) as server:
        with Replica(db, server.url, Shape("items")) as replica:
            assert replica.wait_until_synced(30)
            txid = write(fake)
            assert replica.wait_until_txid(txid, timeout=20)
        fake.faults.add(Fault("stall", seconds=5, times=10))

        async def main() -> bool:
            async with Replica(db, server.url, Shape("items")) as again:  # its server is slow to answer now
                return await again.txid_synced(txid, timeout=4.5)  # the first answer takes 5 s

        assert anyio.run(main)  # from the store, before any response arrived


def test_a_transfer_in_a_group_is_visible_in_both_shapes_at_once(tmp_path: Path) -> None:
    fake = make_fake()
    with serve_in_thread(fake) as server, Replica(tmp_path / "a.db", server.url,
                                                   [Shape("items"), Shape("other")]) as replica:
        assert replica.wait_until_synced(30)
        with fake.transaction() as tx:
            tx.insert("items", {"id": "7", "title": "x"})
            tx.insert("other", {"id": "7", "title": "x"})
        assert tx.txid is not None and replica.wait_until_txid(tx.txid, timeout=20)
        seen = replica.txid_seen(tx.txid)
        assert seen is not None and seen.shapes == ("items", "other")


def test_the_daemon_answers_get_txid(tmp_path: Path) -> None:
    fake = make_fake()
    with serve_in_thread(fake) as server:
        daemon = Daemon(write_config(tmp_path / "replica.toml", server.url))
        try:
            daemon.wait_for(lambda: daemon.readyz()[0] == 200)
            status, body = daemon.get("/txid/abc")
            assert status == 400 and "transaction id" in json.loads(body)["error"]
            assert daemon.get("/txid/5?timeout=61")[0] == 400
            upcoming = write(fake) + 1
            status, body = daemon.get(f"/txid/{upcoming}?timeout=0.5")
            assert status == 408 and json.loads(body)["txid"] == str(upcoming)
            threading.Timer(0.5, write, (fake, "items", 3)).start()
            status, body = daemon.get(f"/txid/{upcoming}?timeout=4")  # waits for it
            assert status == 200, body
            answer = json.loads(body)
            assert answer == {"txid": str(upcoming), "shapes": ["items"], "lsn": str(fake.lsn)}
        finally:
            daemon.close()
