"""Local writes through the Postgres dev server's POST /v1/writes: every type of the type map goes back into
Postgres exactly, a CHECK violation rejects the batch, and the write returns through the shape (design.md §3j)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from pg import sql, wait_for
from test_postgres_e2e import EVERYTHING, FULL_VALUES

from replica import Backoff, Replica, Shape
from replica.sync.upload import HttpUpload
from replica.testing import serve_in_thread
from replica.testing.postgres.server import PostgresElectric

pytestmark = [pytest.mark.postgres, pytest.mark.integration]


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


def outbox_empty(db: Path) -> bool:
    with closing(sqlite3.connect(db)) as app:
        return app.execute("SELECT count(*) FROM _replica_outbox").fetchone() == (0,)


def test_a_copy_of_a_row_of_every_type_written_locally_lands_in_postgres_equal(pg_dsn: str, tmp_path: Path) -> None:
    sql(pg_dsn, EVERYTHING)
    sql(pg_dsn, f"INSERT INTO everything VALUES (1, {FULL_VALUES})")
    db = tmp_path / "app.db"
    with PostgresElectric(pg_dsn, long_poll_timeout=2.0) as source, serve_in_thread(source) as server:
        source.enable_writes()
        with Replica(db, server.url, Shape("everything", writable=True), process="child",
                     upload=HttpUpload(server.base_url + "/v1/writes")) as r:
            assert r.wait_until_synced(30), r.status()
            with closing(sqlite3.connect(db)) as app, app:  # the app copies row 1 as row 2, with plain SQL
                columns = [c[1] for c in app.execute("PRAGMA table_info(everything)")][1:]
                names = ", ".join(f'"{c}"' for c in columns)
                app.execute(f"INSERT INTO everything (id, {names}) SELECT 2, {names} FROM everything WHERE id = 1")
            wait_for(lambda: outbox_empty(db), 30, "the upload to be confirmed")
            with closing(sqlite3.connect(db)) as app:
                rows = app.execute("SELECT * FROM everything ORDER BY id").fetchall()
    assert [r[1:] for r in rows][0] == [r[1:] for r in rows][1]
    (one, two), = sql(pg_dsn, "SELECT to_jsonb(x) - 'id', to_jsonb(y) - 'id' FROM everything x, everything y "
                              "WHERE x.id = 1 AND y.id = 2")
    assert two == one
    assert sql(pg_dsn, "SELECT x.js::text = y.js::text FROM everything x, everything y WHERE x.id = 1 AND y.id = 2") \
        == [(True,)]  # json keeps its text exactly


def test_a_check_violation_rejects_and_a_write_made_while_the_server_is_down_goes_later(
    pg_dsn: str, tmp_path: Path
) -> None:
    sql(pg_dsn, "CREATE TABLE todos (id int PRIMARY KEY, title text CHECK (title <> 'bad'), done bool NOT NULL)")
    sql(pg_dsn, "INSERT INTO todos VALUES (1, 'one', false)")
    db = tmp_path / "app.db"
    rejected: list[str] = []
    with PostgresElectric(pg_dsn, long_poll_timeout=2.0) as source, serve_in_thread(source) as server:
        endpoint = source.enable_writes()
        with Replica(db, server.url, Shape("todos", writable=True), process="child",
                     upload=HttpUpload(server.base_url + "/v1/writes"),
                     on_write_rejected=lambda batch, message: rejected.append(message)) as r:
            assert r.wait_until_synced(30), r.status()
            with closing(sqlite3.connect(db)) as app:
                with app:
                    app.execute("UPDATE todos SET title = 'bad' WHERE id = 1")
                wait_for(lambda: bool(rejected), 30, "the rejection")
                assert app.execute("SELECT title FROM todos").fetchall() == [("one",)]  # rolled back locally
                endpoint.failures = [(503, {"retry-after": "0"})] * 5  # the server is down for a while
                with app:
                    app.execute("INSERT INTO todos (id, title, done) VALUES (2, 'offline', 0)")
                assert app.execute("SELECT id, title FROM todos ORDER BY id").fetchall() == [(1, "one"), (2, "offline")]
                wait_for(lambda: outbox_empty(db), 30, "the upload once the server is back")
    assert "todos_title_check" in rejected[0]
    assert sql(pg_dsn, "SELECT id, title, done FROM todos ORDER BY id") == [(1, "one", False), (2, "offline", False)]
    assert len(endpoint.txids) == 1


def test_writes_made_while_the_server_is_stopped_are_uploaded_once_it_runs_again(pg_dsn: str, tmp_path: Path) -> None:
    """Offline for real: the dev server stops (connections refused, for the shape and the uploads alike),
    the app keeps writing and reading its writes, and once the server listens again on the same port
    everything goes up in order, once."""
    sql(pg_dsn, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    sql(pg_dsn, "INSERT INTO notes VALUES (1, 'synced')")
    db = tmp_path / "app.db"
    with PostgresElectric(pg_dsn, long_poll_timeout=2.0) as source:
        endpoint = source.enable_writes()
        with serve_in_thread(source) as server:
            port, url, writes = server.port, server.url, server.base_url + "/v1/writes"
            replica = Replica(db, url, Shape("notes", writable=True), process="child", upload=HttpUpload(writes))
            replica.start()
            assert replica.wait_until_synced(30), replica.status()
        try:
            with closing(sqlite3.connect(db)) as app:
                for n in range(2, 5):
                    with app:
                        app.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (n, f"offline {n}"))
                with app:
                    app.execute("UPDATE notes SET body = 'edited offline' WHERE id = 2")
                wait_for(lambda: replica.status()[0].state == "offline", 30, "the replica to notice")
                assert app.execute("SELECT id, body FROM notes ORDER BY id").fetchall() == [
                    (1, "synced"), (2, "edited offline"), (3, "offline 3"), (4, "offline 4")]
            with serve_in_thread(source, port=port):
                wait_for(lambda: outbox_empty(db), 60, "the queued writes once the server is back")
        finally:
            replica.stop()
    assert sql(pg_dsn, "SELECT id, body FROM notes ORDER BY id") == [
        (1, "synced"), (2, "edited offline"), (3, "offline 3"), (4, "offline 4")]
    assert len(endpoint.received) == len(set(endpoint.received)) == len(endpoint.txids)  # no batch twice
