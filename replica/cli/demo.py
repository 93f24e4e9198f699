"""``replica demo``: the whole product in half a minute, with nothing to set up.

Starts the built-in fake Electric on 127.0.0.1 with a sample table, runs ``replica sync`` into
``./demo.db``, prints rows, then makes live changes on the fake and shows them arrive while a
second ``replica sync`` follows the live log. With ``--postgres`` the table lives in a throwaway
Postgres cluster served by the Postgres dev server, and the changes are SQL statements. Reads
the database with the stdlib sqlite3 module, as any other app would.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TextIO

from replica.testing import sample_fake, serve_in_thread

__all__ = ["run_demo"]


def run_demo(
    db_path: str | Path = "demo.db", *, out: TextIO = sys.stdout, timeout: float = 20.0, postgres: bool = False,
    writes: bool = False,
) -> int:
    """``postgres``: serve the sample table from a throwaway Postgres cluster (the Postgres dev
    server, replica.testing.pgserver) and make the live changes with SQL, instead of the fake.
    ``writes``: show local writes instead (``demo_writes``)."""
    db = Path(db_path)
    for suffix in ("", "-wal", "-shm"):  # the fake is new each run, so start the copy afresh too
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    say = _printer(out)
    if writes:
        from replica.cli.demo_writes import run_writes_demo

        return run_writes_demo(db, say, lambda predicate: _wait(predicate, timeout))
    if postgres:
        from replica.testing.postgres.demo import postgres_source  # needs psycopg: the postgres extra

        source = postgres_source(say, _new_row())
    else:
        source = _fake_source(say)
    with source as (url, where, changes):
        sync = [sys.executable, "-m", "replica", "sync", url, "--table", "items", "--db", str(db)]
        say(f"$ replica sync {url} --table items --db {db} --once")
        subprocess.run([*sync, "--once"], check=True, timeout=timeout)
        with _reader(db) as conn:
            count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
            say(f"{db} now holds {count} rows; the first three:")
            for row in conn.execute("SELECT id, title, done, price FROM items ORDER BY id LIMIT 3"):
                say(f"  {row}")

        say(f"$ replica sync {url} --table items --db {db}   # follows the live log")
        follower = subprocess.Popen(sync)
        try:
            _wait(lambda: _exists(db, "SELECT 1 FROM _replica_shapes WHERE name = 'items'"), timeout)
            steps: list[tuple[str, Callable[[], object], str]] = [
                ("insert item 1001", changes[0], "SELECT 1 FROM items WHERE id = 1001"),
                ("rename item 1", changes[1], "SELECT 1 FROM items WHERE id = 1 AND title = 'renamed live'"),
                ("delete item 2", changes[2], "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM items WHERE id = 2)"),
            ]
            for label, change, check in steps:
                started = time.monotonic()
                change()
                if not _wait(partial(_exists, db, check), timeout):
                    say(f"change did not arrive within {timeout:g} s: {label}")
                    return 1
                say(f"  {label} {where} → visible in {db} after {1000 * (time.monotonic() - started):.0f} ms")
        finally:
            follower.send_signal(signal.SIGTERM)
            code = follower.wait(timeout)
        say(f"stopped the follower with SIGTERM (exit {code}); query {db} with any SQLite tool")
        return 0 if code == 0 else 1


# The live changes: insert item 1001, rename item 1 to "renamed live", delete item 2.
Changes = tuple[Callable[[], object], Callable[[], object], Callable[[], object]]


@contextmanager
def _fake_source(say: Callable[[str], None]) -> Iterator[tuple[str, str, Changes]]:
    fake = sample_fake(rows=1000, long_poll_timeout=5.0)
    with serve_in_thread(fake) as server:
        say(f"fake Electric is serving table 'items' (1000 rows) at {server.url}")
        yield server.url, "on the server", (
            lambda: fake.insert("items", _new_row()),
            lambda: fake.update("items", {"id": "1", "title": "renamed live"}),
            lambda: fake.delete("items", {"id": "2"}),
        )


def _new_row() -> dict[str, str | None]:
    return {
        "id": "1001",
        "title": "added live",
        "done": "f",
        "price": "9.99",
        "tags": "{demo}",
        "created_at": "2026-11-26 12:00:00+00",
        "payload": '{"live": true}',
    }


def _printer(out: TextIO) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    return say


def _reader(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _exists(db: Path, sql: str) -> bool:
    try:
        with _reader(db) as conn:
            return conn.execute(sql).fetchone() is not None
    except sqlite3.Error:  # the file or table may not exist yet
        return False


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False
