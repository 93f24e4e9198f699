"""The transfer test on real Postgres (R11): a writer moves amounts between rows of two (three) tables in
single transactions, so the total never changes in Postgres; `replica run` syncs the tables through the
Postgres dev server into one consistency group; a reader in another process checks the total in every
read. Also with 409s injected mid-run and the syncer killed with SIGKILL and restarted mid-run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from oracle import local
from pg import sql, wait_for

from replica.testing import Fault, serve_in_thread
from replica.testing.postgres.server import PostgresElectric

pytestmark = [pytest.mark.postgres, pytest.mark.integration]
ROWS, EACH = 20, 1000

READER = """
import json, sqlite3, sys, time
db, tables, stop, total = sys.argv[1], sys.argv[2].split(","), sys.argv[3], int(sys.argv[4])
reads = violations = 0
bad = []
import os
while not os.path.exists(stop):
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
        try:
            row = conn.execute("SELECT " + " + ".join(f"(SELECT sum(amount) FROM {t})" for t in tables)).fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        continue  # before the first publish the tables are not there
    if row[0] is None:
        continue
    reads += 1
    if row[0] != total:
        violations += 1
        bad.append(row[0])
print(json.dumps({"reads": reads, "violations": violations, "bad": bad[:10]}))
"""


def writer(dsn: str, tables: list[str], stop: threading.Event, done: list[int]) -> None:
    rng = random.Random(7)
    with psycopg.connect(dsn, autocommit=False) as conn:
        while not stop.is_set():
            a, b = rng.sample(tables, 2)
            amount = rng.randint(1, 9)
            with conn.transaction():
                conn.execute(f"UPDATE {a} SET amount = amount - %s WHERE id = %s", (amount, rng.randint(1, ROWS)))
                conn.execute(f"UPDATE {b} SET amount = amount + %s WHERE id = %s", (amount, rng.randint(1, ROWS)))
            done[0] += 1
            time.sleep(0.005)


def daemon(config: Path) -> subprocess.Popen[bytes]:
    with open(config.with_suffix(".log"), "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "replica", "run", "-c", str(config)], stderr=log)


@pytest.mark.guarantee("R11")
@pytest.mark.parametrize("count", [2, 3])
# With 409s it once failed in about 1 of 4 runs: a refetched snapshot can hold transactions past its up-to-date's
# LSN (the snapshot reads Postgres ahead of the server's replication stream); the group now bounds a snapshot by a
# transaction that began after it (design.md §3c).
@pytest.mark.parametrize("refetch", [False, True], ids=["kill_9", "409s_and_kill_9"])
def test_transfers_between_tables_are_never_half_visible_even_across_409s_and_kill_9(
    pg_dsn: str, tmp_path: Path, count: int, refetch: bool
) -> None:
    tables = [f"acct_{i}" for i in range(count)]
    for table in tables:
        sql(pg_dsn, f"CREATE TABLE {table} (id int PRIMARY KEY, amount int NOT NULL)")
        sql(pg_dsn, f"INSERT INTO {table} SELECT i, {EACH} FROM generate_series(1, {ROWS}) AS i")
    total = count * ROWS * EACH
    db, stop_file = tmp_path / "app.db", tmp_path / "stop"
    stop, done = threading.Event(), [0]
    with PostgresElectric(pg_dsn, long_poll_timeout=20.0) as source, serve_in_thread(source) as server:
        config = tmp_path / "replica.toml"
        config.write_text(f'url = "{server.url}"\ndatabase = "app.db"\nlisten = "127.0.0.1:0"\n'
                          + "".join(f'[[shapes]]\ntable = "{t}"\n' for t in tables))
        reader = subprocess.Popen([sys.executable, "-c", READER, str(db), ",".join(tables), str(stop_file),
                                   str(total)], stdout=subprocess.PIPE, text=True)
        sync = daemon(config)
        moving = threading.Thread(target=writer, args=(pg_dsn, tables, stop, done))

        def advance() -> None:
            """1.5 s of transfers, and at least 60 of them: a loaded machine makes fewer in the same time."""
            start = done[0]
            time.sleep(1.5)
            wait_for(lambda: done[0] >= start + 60, what="the writer's transfers", timeout=60)

        try:
            wait_for(lambda: db.exists() and all(len(local(db, t, ["id"])) == ROWS for t in tables),
                     what="the first consistent state", timeout=60)
            moving.start()
            advance()
            server_faults = source.faults
            if refetch:
                server_faults.add(Fault("must_refetch", handle=True))  # the next request of some shape: a 409
            advance()
            sync.send_signal(signal.SIGKILL)  # mid-run, whatever it was doing
            sync.wait()
            sync = daemon(config)
            advance()
            if refetch:
                server_faults.add(Fault("must_refetch", handle=True))
            advance()
        finally:
            stop.set()
            if moving.is_alive():
                moving.join()
        try:
            want = {t: {(i,): {"id": i, "amount": a} for i, a in sql(pg_dsn, f"SELECT id, amount FROM {t}")}
                    for t in tables}
            wait_for(lambda: all(local(db, t, ["id"]) == want[t] for t in tables), what="convergence", timeout=60)
        finally:
            stop_file.touch()
            out, _ = reader.communicate(timeout=60)
            sync.send_signal(signal.SIGTERM)
            sync.wait(30)
    seen = json.loads(out)
    assert done[0] > 200, "the writer barely ran"
    assert seen["reads"] > 200, seen
    assert seen["violations"] == 0, f"reads saw totals Postgres never had: {seen}"
