"""End to end from Postgres writes to SQLite rows: a throwaway Postgres 15 cluster, the Postgres
dev server (``replica.testing.pgserver``) on a loopback port, ``replica.Replica`` syncing.

Expected SQLite values are written out by hand from the README's type map, and expected rows
come from Postgres itself, so neither side's converter grades its own homework.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from oracle import local
from pg import sql, wait_for

from replica import Backoff, Replica, Shape
from replica.testing import Server, serve_in_thread
from replica.testing.postgres.server import PostgresElectric

pytestmark = [pytest.mark.postgres, pytest.mark.integration]


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


@contextmanager
def serving(dsn: str) -> Iterator[tuple[PostgresElectric, Server]]:
    with PostgresElectric(dsn, long_poll_timeout=2.0) as source, serve_in_thread(source) as server:
        yield source, server


@contextmanager
def syncing(url: str, db: Path, shape: Shape) -> Iterator[Replica]:
    replica = Replica(db, url, shape)
    replica.start()
    try:
        assert replica.wait_until_synced(30), replica.status()
        yield replica
    finally:
        replica.stop()


EVERYTHING = """
CREATE TYPE mood AS ENUM ('happy', 'sad', 'it''s complicated');
CREATE TABLE everything (
    id int4 PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, f_nan float8, f_inf float8, f_ninf float4,
    num numeric(12, 4), big numeric, b bool, t text, vc varchar(10), bp char(5), by bytea,
    js json, jb jsonb, u uuid, d date, tm time, ts timestamp, tstz timestamptz, iv interval,
    m mood, ia int4[], ta text[], i2d int4[][], ba bool[], ma mood[], tsa timestamptz[]
)"""
FULL_VALUES = """
    32767, -2147483648, 9223372036854775807, 3.14, 0.1, 'NaN', 'Infinity', '-Infinity',
    12.34, 123456789012345678901234567890.123456789, true, 'it''s "quoted" \\ back', 'short', 'ab',
    '\\x00ff10', '{"b": 1,  "a":[1, 2]}', '{"b": 1,  "a":[1, 2]}', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
    '2024-02-29', '13:45:06.789', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.5+02',
    '1 year 2 mons 3 days 04:05:06.5', 'it''s complicated', '{1,NULL,3}',
    '{"a,b","c\\"d","NULL",NULL,"back\\\\slash",""}', '{{1,2},{3,NULL}}', '{t,f}', '{happy,sad}',
    '{"2024-01-02 03:04:05+00",NULL}'"""
# The README's type map, value by value, for FULL_VALUES.
FULL_ROW: dict[str, Any] = {
    "i2": 32767, "i4": -2147483648, "i8": 9223372036854775807, "f4": 3.14, "f8": 0.1,
    "f_nan": "NaN", "f_inf": float("inf"), "f_ninf": float("-inf"),
    "num": "12.3400", "big": "123456789012345678901234567890.123456789", "b": 1,
    "t": 'it\'s "quoted" \\ back', "vc": "short", "bp": "ab   ", "by": b"\x00\xff\x10",
    "js": '{"b": 1,  "a":[1, 2]}', "jb": '{"a": [1, 2], "b": 1}', "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "d": "2024-02-29", "tm": "13:45:06.789", "ts": "2024-01-02 03:04:05.123456",
    "tstz": "2024-01-02 01:04:05.5+00:00", "iv": "P1Y2M3DT4H5M6.5S", "m": "it's complicated",
    "ia": "[1,null,3]", "ta": '["a,b","c\\"d","NULL",null,"back\\\\slash",""]', "i2d": "[[1,2],[3,null]]",
    "ba": "[true,false]", "ma": '["happy","sad"]', "tsa": '["2024-01-02 03:04:05+00:00",null]',
}


def test_every_type_round_trips_exactly_per_the_type_map(pg_dsn: str, tmp_path: Path) -> None:
    sql(pg_dsn, EVERYTHING)
    # Rows 1 and 2 come through the snapshot, 3 and 4 through logical decoding: both paths.
    sql(pg_dsn, f"INSERT INTO everything VALUES (1, {FULL_VALUES}); INSERT INTO everything (id) VALUES (2)")
    db = tmp_path / "r.db"
    with serving(pg_dsn) as (_, server), syncing(server.url, db, Shape("everything")):
        sql(pg_dsn, f"INSERT INTO everything VALUES (3, {FULL_VALUES})")
        sql(pg_dsn, "INSERT INTO everything (id) VALUES (4)")
        wait_for(lambda: len(local(db, "everything", ["id"])) == 4, what="the live rows")
    rows = local(db, "everything", ["id"])
    nulls = dict.fromkeys(FULL_ROW)
    assert rows == {
        (1,): {"id": 1, **FULL_ROW},
        (2,): {"id": 2, **nulls},
        (3,): {"id": 3, **FULL_ROW},
        (4,): {"id": 4, **nulls},
    }


def test_a_write_in_postgres_becomes_visible_in_sqlite(pg_dsn: str, tmp_path: Path) -> None:
    sql(pg_dsn, "CREATE TABLE items (id int8 PRIMARY KEY, title text NOT NULL, done bool)")
    db = tmp_path / "r.db"
    with serving(pg_dsn) as (_, server), syncing(server.url, db, Shape("items")):
        assert local(db, "items", ["id"]) == {}
        sql(pg_dsn, "INSERT INTO items VALUES (1, 'one', false)")
        wait_for(lambda: local(db, "items", ["id"]) == {(1,): {"id": 1, "title": "one", "done": 0}}, what="insert")
        sql(pg_dsn, "UPDATE items SET done = true, title = 'uno' WHERE id = 1")
        wait_for(lambda: local(db, "items", ["id"]) == {(1,): {"id": 1, "title": "uno", "done": 1}}, what="update")
        sql(pg_dsn, "UPDATE items SET id = 7 WHERE id = 1")  # a key change: delete + insert
        wait_for(lambda: list(local(db, "items", ["id"])) == [(7,)], what="key change")
        sql(pg_dsn, "DELETE FROM items")
        wait_for(lambda: local(db, "items", ["id"]) == {}, what="delete")


def test_concurrent_writer_transactions_arrive_whole_and_in_commit_order(pg_dsn: str, tmp_path: Path) -> None:
    # Each writer transaction inserts ROWS rows, then takes the next number from a counter row
    # and stamps its rows with it. The counter's row lock is held to commit, so the numbers
    # follow commit order: every commit replica makes visible must show rows numbered exactly
    # 1..n, ROWS of each (a partial transaction or one out of order breaks that).
    sql(pg_dsn, "CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL); INSERT INTO counter VALUES (1, 0);"
                "CREATE TABLE ledger (id serial PRIMARY KEY, writer int NOT NULL, seq int)")
    writers, transactions, rows_per_tx = 4, 25, 3
    db = tmp_path / "r.db"
    commits: list[int] = []
    problems: list[str] = []

    def check(_applied: object) -> None:  # runs after each commit, before the next one
        per_seq: dict[int, int] = {}
        for row in local(db, "ledger", ["id"]).values():
            per_seq[row["seq"]] = per_seq.get(row["seq"], 0) + 1
        if sorted(per_seq) != list(range(1, len(per_seq) + 1)) or set(per_seq.values()) - {rows_per_tx}:
            problems.append(f"after commit {len(commits)}: rows per number {sorted(per_seq.items())}")
        commits.append(len(per_seq))

    def write(writer: int) -> None:
        # At least `transactions` each, and on until replica has committed a few times meanwhile.
        deadline = time.monotonic() + 20
        with psycopg.connect(pg_dsn) as conn:
            done = 0
            while done < transactions or (len(commits) < 5 and time.monotonic() < deadline):
                done += 1
                with conn.transaction():
                    ids = [conn.execute("INSERT INTO ledger (writer) VALUES (%s) RETURNING id", [writer]).fetchone()
                           for _ in range(rows_per_tx)]
                    time.sleep(0.002)  # transactions overlap: commit order differs from start order
                    (n,) = conn.execute("UPDATE counter SET n = n + 1 RETURNING n").fetchone() or (0,)
                    conn.execute("UPDATE ledger SET seq = %s WHERE id = ANY(%s)", [n, [i[0] for i in ids if i]])

    with serving(pg_dsn) as (_, server):
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()  # the writers are busy while the shape takes its snapshot
        replica = Replica(db, server.url, Shape("ledger"), on_commit=check)
        replica.start()
        try:
            for thread in threads:
                thread.join(60)
            (total,) = sql(pg_dsn, "SELECT count(*) FROM ledger")[0]
            wait_for(lambda: len(local(db, "ledger", ["id"])) == total, what="all transactions")
        finally:
            replica.stop()
    assert not problems, problems[:3]
    assert len(commits) >= 5  # replica committed several times while the writers ran
    expected = {(i,): {"id": i, "writer": w, "seq": s} for i, w, s in sql(pg_dsn, "SELECT id, writer, seq FROM ledger")}
    assert local(db, "ledger", ["id"]) == expected


def test_a_where_shape_with_params_follows_rows_moving_in_and_out(pg_dsn: str, tmp_path: Path) -> None:
    sql(pg_dsn, "CREATE TABLE tasks (id int PRIMARY KEY, status text, prio int, note text);"
                "INSERT INTO tasks SELECT i, CASE WHEN i % 2 = 0 THEN 'open' ELSE 'done' END, i % 5, 'n' || i"
                " FROM generate_series(1, 40) AS i")
    where, params = "status = $1 AND prio >= $2", {"1": "open", "2": "2"}

    def postgres_says() -> dict[tuple[int], dict[str, Any]]:
        found = sql(pg_dsn, "SELECT id, status, prio, note FROM tasks WHERE status = 'open' AND prio >= 2")
        return {(i,): {"id": i, "status": s, "prio": p, "note": n} for i, s, p, n in found}

    db = tmp_path / "r.db"
    with serving(pg_dsn) as (_, server), syncing(server.url, db, Shape("tasks", where=where, params=params)):
        assert local(db, "tasks", ["id"]) == postgres_says()
        steps = [
            "UPDATE tasks SET status = 'open' WHERE id IN (3, 7, 9)",  # some move in
            "UPDATE tasks SET prio = 0 WHERE id IN (2, 4)",  # some move out
            "UPDATE tasks SET note = 'changed' WHERE status = 'open'",  # updates inside, none outside
            "UPDATE tasks SET id = id + 100 WHERE id = 8",  # a key change inside the shape
            "UPDATE tasks SET status = NULL WHERE id = 12",  # NULL: unknown is not in the shape
            "DELETE FROM tasks WHERE id IN (14, 15)",
            "INSERT INTO tasks VALUES (200, 'open', 4, 'new'), (201, 'open', 1, 'low')",
        ]
        for step in steps:
            sql(pg_dsn, step)
            wait_for(lambda: local(db, "tasks", ["id"]) == postgres_says(), what=step)


def test_truncate_makes_replica_refetch(pg_dsn: str, tmp_path: Path) -> None:
    sql(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, title text); INSERT INTO items VALUES (1, 'a'), (2, 'b')")
    db = tmp_path / "r.db"
    with serving(pg_dsn) as (_, server), syncing(server.url, db, Shape("items")) as replica:
        first = replica.status()[0].handle
        assert set(local(db, "items", ["id"])) == {(1,), (2,)}
        sql(pg_dsn, "BEGIN; TRUNCATE items; INSERT INTO items VALUES (3, 'c'); COMMIT")
        wait_for(lambda: local(db, "items", ["id"]) == {(3,): {"id": 3, "title": "c"}}, what="the refetch")
        wait_for(lambda: replica.status()[0].handle not in (None, first), what="a new handle")


def test_alter_table_add_column_makes_replica_refetch_with_the_new_column(pg_dsn: str, tmp_path: Path) -> None:
    sql(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, title text); INSERT INTO items VALUES (1, 'a')")
    db = tmp_path / "r.db"
    with serving(pg_dsn) as (_, server), syncing(server.url, db, Shape("items")):
        sql(pg_dsn, "ALTER TABLE items ADD COLUMN price numeric(6, 2) NOT NULL DEFAULT 9.5")
        wait_for(lambda: local(db, "items", ["id"]) == {(1,): {"id": 1, "title": "a", "price": "9.50"}},
                 what="the refetch with the new column")
        sql(pg_dsn, "INSERT INTO items VALUES (2, 'b', 1)")
        wait_for(lambda: local(db, "items", ["id"]).get((2,)) == {"id": 2, "title": "b", "price": "1.00"},
                 what="a live row with the new column")


def test_the_command_line_server_serves_a_database(pg_dsn: str, tmp_path: Path) -> None:
    sql(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, title text); INSERT INTO items VALUES (1, 'a')")
    server = subprocess.Popen([sys.executable, "-m", "replica.testing", "serve", "--postgres", pg_dsn, "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1/shape"), url
        db = tmp_path / "r.db"
        done = subprocess.run([sys.executable, "-m", "replica", "sync", url, "--table", "items", "--db", str(db),
                               "--once"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert local(db, "items", ["id"]) == {(1,): {"id": 1, "title": "a"}}
    finally:
        server.terminate()
        code = server.wait(10)
        assert server.stdout is not None
        server.stdout.close()
    assert code == 0  # SIGTERM is a clean exit, and the slot went with the server's session
    assert sql(pg_dsn, "SELECT count(*) FROM pg_replication_slots") == [(0,)]


def test_the_demo_runs_from_a_throwaway_postgres(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    done = subprocess.run([sys.executable, "-m", "replica", "demo", "--postgres", "--db", str(db)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "throwaway Postgres" in done.stdout and "now holds 1000 rows" in done.stdout
    for change in ("insert item 1001", "rename item 1", "delete item 2"):
        assert f"{change} in Postgres → visible in" in done.stdout
