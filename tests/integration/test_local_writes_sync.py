"""Local writes end to end against FakeElectric's POST /v1/writes: a write shows at once, is uploaded,
comes back through the shape and leaves the outbox in the same transaction (design.md §3j)."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import replica
from replica import Replica, Shape, WriteRejected
from replica.protocol.writes import Batch
from replica.sync.backoff import Backoff
from replica.sync.upload import HttpUpload
from replica.testing import FakeElectric, Server

pytestmark = pytest.mark.anyio
WRITABLE = Shape("items", writable=True)
QUICK = Backoff(initial=0.01, cap=0.05)


def read(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(replica.connect(path)) as db:  # apsw: the writer runs in this process
        return [tuple(r) for r in db.execute(sql).fetchall()]


def write(path: Path, *statements: str) -> None:
    import apsw

    with closing(apsw.Connection(str(path))) as db:
        db.set_busy_timeout(5000)
        with db:
            for sql in statements:
                db.execute(sql)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.02)


def mock_upload(fake: FakeElectric) -> HttpUpload:
    return HttpUpload("http://fake/v1/writes", transport=httpx.MockTransport(fake.handler))


async def test_a_local_write_shows_at_once_reaches_the_server_and_comes_back(fake: FakeElectric, tmp_path: Path) -> None:
    endpoint = fake.enable_writes()
    db = tmp_path / "app.db"
    seen: list[Any] = []
    stop = threading.Event()

    def watch() -> None:  # a reader polling the row all along: it must never see the old title again
        while not stop.is_set():
            rows = read(db, "SELECT title FROM items WHERE id = 1") if db.exists() else []
            if rows and (not seen or seen[-1] != rows[0][0]):
                seen.append(rows[0][0])
            time.sleep(0.001)

    async with Replica(db, "http://fake/v1/shape", WRITABLE, transport=httpx.MockTransport(fake.handler),
                       upload=mock_upload(fake), backoff=QUICK) as r:
        assert await r.synced(10)
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            await until(lambda: seen == ["a"])
            write(db, "UPDATE items SET title = 'mine' WHERE id = 1", "INSERT INTO items (id, title) VALUES (3, 'new')")
            assert read(db, "SELECT id, title FROM items ORDER BY id") == [(1, "mine"), (2, "b"), (3, "new")]
            await until(lambda: read(db, "SELECT count(*) FROM _replica_outbox") == [(0,)])
        finally:
            stop.set()
            watcher.join()
    assert seen == ["a", "mine"]  # no flicker back to "a" when the pending change left
    assert {k: v["title"] for k, v in fake.rows("items").items()} == {
        '"public"."items"/"1"': "mine", '"public"."items"/"2"': "b", '"public"."items"/"3"': "new"}
    assert len(endpoint.received) == 1
    assert read(db, "SELECT id, title FROM _replica_synced_items ORDER BY id") == [(1, "mine"), (2, "b"), (3, "new")]


async def test_a_rejected_batch_is_rolled_back_and_reported(fake: FakeElectric, tmp_path: Path) -> None:
    endpoint = fake.enable_writes()
    endpoint.reject = lambda change: "CHECK constraint: title must not be bad" if change["value"].get("title") == "bad" \
        else None
    db = tmp_path / "app.db"
    rejected: list[tuple[Batch, str]] = []
    async with Replica(db, "http://fake/v1/shape", WRITABLE, transport=httpx.MockTransport(fake.handler),
                       upload=mock_upload(fake), on_write_rejected=lambda b, m: rejected.append((b, m)),
                       backoff=QUICK) as r:
        assert await r.synced(10)
        write(db, "UPDATE items SET title = 'bad' WHERE id = 2")
        await until(lambda: bool(rejected))
        assert read(db, "SELECT id, title FROM items ORDER BY id") == [(1, "a"), (2, "b")]
        assert r.status()[0].write_rejected == "CHECK constraint: title must not be bad"  # and /readyz, status
        write(db, "UPDATE items SET title = 'good' WHERE id = 2")  # the next batch goes through
        await until(lambda: read(db, "SELECT count(*) FROM _replica_outbox") == [(0,)])
    assert rejected[0][1] == "CHECK constraint: title must not be bad"
    assert [c.op for c in rejected[0][0].changes] == ["update"]
    assert fake.rows("items")['"public"."items"/"2"']["title"] == "good"


async def test_failed_uploads_are_retried_under_the_same_batch_id(fake: FakeElectric, tmp_path: Path) -> None:
    endpoint = fake.enable_writes()
    endpoint.failures = [(503, {}), (429, {"retry-after": "0"})]
    endpoint.lose_answers = 1  # applied, but the answer never arrives: the retry must not apply it twice
    db = tmp_path / "app.db"
    async with Replica(db, "http://fake/v1/shape", WRITABLE, transport=httpx.MockTransport(fake.handler),
                       upload=mock_upload(fake), backoff=QUICK) as r:
        assert await r.synced(10)
        write(db, "INSERT INTO items (id, title) VALUES (5, 'once')")
        await until(lambda: read(db, "SELECT count(*) FROM _replica_outbox") == [(0,)])
    assert len(endpoint.received) == 4 and len(set(endpoint.received)) == 1
    assert len(endpoint.txids) == 1
    assert fake.rows("items")['"public"."items"/"5"']["title"] == "once"


async def test_an_upload_function_sync_or_async(fake: FakeElectric, tmp_path: Path) -> None:
    endpoint = fake.enable_writes()
    calls: list[str] = []

    def upload(batch: Batch) -> str:  # a plain function, as threaded apps write one
        calls.append(batch.batch_id)
        if len(calls) == 1:
            raise ConnectionError("offline")  # any error: retried
        answer = endpoint.respond(replica.protocol.writes.batch_body(batch))
        if answer.status != 200:
            raise WriteRejected(answer.json()["message"])
        return str(answer.json()["txid"])

    db = tmp_path / "app.db"
    async with Replica(db, "http://fake/v1/shape", WRITABLE, transport=httpx.MockTransport(fake.handler),
                       upload=upload, backoff=QUICK) as r:
        assert await r.synced(10)
        write(db, "DELETE FROM items WHERE id = 1")
        await until(lambda: read(db, "SELECT count(*) FROM _replica_outbox") == [(0,)])
    assert len(calls) == 2 and calls[0] == calls[1]
    assert '"public"."items"/"1"' not in fake.rows("items")


def test_child_process_uploads_writes_of_the_stdlib_sqlite3(server: Server, fake: FakeElectric, tmp_path: Path) -> None:
    fake.enable_writes()
    db = tmp_path / "app.db"
    with Replica(db, server.url, WRITABLE, process="child", backoff=QUICK,
                 upload=HttpUpload(server.base_url + "/v1/writes")) as r:
        assert r.wait_until_synced(20)
        with closing(sqlite3.connect(db)) as app:
            with app:
                app.execute("UPDATE items SET done = 0, tags = '[\"p\",null]' WHERE id = 2")
            assert app.execute("SELECT done, tags FROM items WHERE id = 2").fetchone() == (0, '["p",null]')
            deadline = time.monotonic() + 60
            while app.execute("SELECT count(*) FROM _replica_outbox").fetchone() != (0,):
                assert time.monotonic() < deadline
                time.sleep(0.05)
    assert fake.rows("items")['"public"."items"/"2"'] == {"id": "2", "title": "b", "done": "false", "tags": '{p,NULL}'}


def test_kill_9_mid_upload_resends_the_same_batch(server: Server, fake: FakeElectric, tmp_path: Path) -> None:
    """The sync process dies after the server applied a batch and before it noted the txid: the next
    one sends the same batch_id, the server answers its first txid, nothing is applied twice."""
    from test_child import children  # the sync processes of this one

    endpoint = fake.enable_writes()
    db = tmp_path / "app.db"
    calls: list[str] = []
    killed: list[int] = []

    def upload(batch: Batch) -> str:
        calls.append(batch.batch_id)
        answer = endpoint.respond(replica.protocol.writes.batch_body(batch))
        if len(calls) == 1:
            deadline = time.monotonic() + 10
            while len(found := children(os.getpid())) != 1:  # a stopped test's child may still be going
                assert time.monotonic() < deadline, found
                time.sleep(0.05)
            os.kill(found[0], signal.SIGKILL)
            killed.append(found[0])
            time.sleep(0.2)  # dead before it could note the answer
        return str(answer.json()["txid"])

    with Replica(db, server.url, WRITABLE, process="child", backoff=QUICK, upload=upload) as r:
        assert r.wait_until_synced(20)
        with closing(sqlite3.connect(db)) as app:
            with app:
                app.execute("UPDATE items SET title = 'after the crash' WHERE id = 1")
            deadline = time.monotonic() + 60
            while app.execute("SELECT count(*) FROM _replica_outbox").fetchone() != (0,):
                assert time.monotonic() < deadline, (calls, killed, r.status())
                time.sleep(0.05)
            assert app.execute("SELECT title FROM items WHERE id = 1").fetchone() == ("after the crash",)
    assert killed and len(calls) >= 2 and set(calls) == {calls[0]}
    assert endpoint.received == calls and len(endpoint.txids) == 1
    assert fake.rows("items")['"public"."items"/"1"']["title"] == "after the crash"
