"""``replica demo``: the whole product in half a minute, with nothing to set up.

Starts the built-in fake Electric on 127.0.0.1 with a sample table, runs ``replica sync`` into
``./demo.db``, prints rows, then makes live changes on the fake and shows them arrive while a
second ``replica sync`` follows the live log. Reads the database with the stdlib sqlite3 module,
as any other app would.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from replica.testing import sample_fake, serve_in_thread

__all__ = ["run_demo"]


def run_demo(db_path: str | Path = "demo.db", *, out: TextIO = sys.stdout, timeout: float = 20.0) -> int:
    db = Path(db_path)
    for suffix in ("", "-wal", "-shm"):  # the fake is new each run, so start the copy afresh too
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    fake = sample_fake(rows=1000, long_poll_timeout=5.0)
    say = _printer(out)
    with serve_in_thread(fake) as server:
        say(f"fake Electric is serving table 'items' (1000 rows) at {server.url}")
        sync = [sys.executable, "-m", "replica", "sync", server.url, "--table", "items", "--db", str(db)]
        say(f"$ replica sync {server.url} --table items --db {db} --once")
        subprocess.run([*sync, "--once"], check=True, timeout=timeout)
        with _reader(db) as conn:
            count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
            say(f"{db} now holds {count} rows; the first three:")
            for row in conn.execute("SELECT id, title, done, price FROM items ORDER BY id LIMIT 3"):
                say(f"  {row}")

        say(f"$ replica sync {server.url} --table items --db {db}   # follows the live log")
        follower = subprocess.Popen(sync)
        try:
            _wait(lambda: _exists(db, "SELECT 1 FROM _replica_shapes WHERE name = 'items'"), timeout)
            steps: list[tuple[str, Callable[[], object], str]] = [
                ("insert item 1001", lambda: fake.insert("items", _new_row()), "SELECT 1 FROM items WHERE id = 1001"),
                (
                    "rename item 1",
                    lambda: fake.update("items", {"id": "1", "title": "renamed live"}),
                    "SELECT 1 FROM items WHERE id = 1 AND title = 'renamed live'",
                ),
                ("delete item 2", lambda: fake.delete("items", {"id": "2"}), "SELECT 1 WHERE NOT EXISTS "
                 "(SELECT 1 FROM items WHERE id = 2)"),
            ]
            for label, change, check in steps:
                started = time.monotonic()
                change()
                if not _wait(lambda check=check: _exists(db, check), timeout):
                    say(f"change did not arrive within {timeout:g} s: {label}")
                    return 1
                say(f"  {label} on the server → visible in {db} after {1000 * (time.monotonic() - started):.0f} ms")
        finally:
            follower.send_signal(signal.SIGTERM)
            code = follower.wait(timeout)
        say(f"stopped the follower with SIGTERM (exit {code}); query {db} with any SQLite tool")
        return 0 if code == 0 else 1


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
