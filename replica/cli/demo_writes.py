"""``replica demo --writes``: local writes, end to end, with nothing to set up.

Starts the built-in fake Electric on 127.0.0.1 with its write endpoint on (``POST /v1/writes``),
runs the daemon (``replica run``) with the sample table ``items`` writable, and then writes to
``items`` with the stdlib sqlite3 module, as any other app would: the write shows at once, is
uploaded, applied by the server, and comes back through the shape. Then the write endpoint goes
down (503), a write made meanwhile waits in the outbox (``replica status`` says so), and is uploaded
once the endpoint is back.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from replica.cli.status import read_status
from replica.testing import sample_fake, serve_in_thread

__all__ = ["run_writes_demo"]


def run_writes_demo(db: Path, say: Callable[[str], None], wait: Callable[[Callable[[], bool]], bool]) -> int:
    """``say`` prints a line; ``wait(predicate)`` is True once it holds, False at the demo's timeout."""
    fake = sample_fake(rows=1000, long_poll_timeout=5.0)
    endpoint = fake.enable_writes()
    with serve_in_thread(fake) as server, tempfile.TemporaryDirectory() as scratch:
        writes = f"{server.base_url}/v1/writes"
        config = Path(scratch) / "replica.toml"
        config.write_text(f'url = "{server.url}"\ndatabase = "{db.resolve()}"\nlisten = "127.0.0.1:0"\n\n'
                          f'[[shapes]]\ntable = "items"\nwritable = true\n\n[writes]\nurl = "{writes}"\n')
        say(f"fake Electric serves table 'items' (1000 rows) at {server.url}, and takes writes at {writes}")
        say("$ replica run -c replica.toml   # [[shapes]] table = \"items\", writable = true; [writes] url = …")
        daemon = subprocess.Popen([sys.executable, "-m", "replica", "run", "-c", str(config)])
        try:
            if not wait(lambda: daemon.poll() is not None or _rows(db, "SELECT count(*) FROM items") == [(1000,)]):
                say("the first sync did not finish in time")
                return 1
            if daemon.poll() is not None:
                say(f"the daemon exited ({daemon.returncode}); its log above says why")
                return 1

            def server_title(key: str) -> str | None:
                row = fake.rows("items").get(f'"public"."items"/"{key}"')
                return None if row is None else row["title"]

            say("the app writes with sqlite3: UPDATE items SET title = 'written locally' WHERE id = 1")
            started = time.monotonic()
            _write(db, "UPDATE items SET title = 'written locally' WHERE id = 1")
            say(f"  read back at once: {_rows(db, 'SELECT id, title FROM items WHERE id = 1')}; "
                f"waiting in _replica_outbox: {_rows(db, 'SELECT count(*) FROM _replica_outbox')[0][0]}")
            if not wait(lambda: server_title("1") == "written locally" and _pending(db) == 0):
                say("the write was not uploaded and confirmed in time")
                return 1
            say(f"  uploaded, applied by the server and confirmed by the synced row after "
                f"{1000 * (time.monotonic() - started):.0f} ms; the outbox is empty")

            endpoint.failures[:] = [(503, {})] * 1_000_000
            say("the write endpoint goes down (it answers 503); the app inserts item 1002 meanwhile")
            _write(db, "INSERT INTO items (id, title, done) VALUES (1002, 'written offline', 0)")
            say(f"  read back at once: {_rows(db, 'SELECT id, title FROM items WHERE id = 1002')}")
            wait(lambda: bool(_status(db).get("write_error")))
            status = _status(db)
            say(f"  $ replica status: {status['writes_pending']} local write waits to upload, "
                f"last failure: {status['write_error']}")
            endpoint.failures.clear()
            back = time.monotonic()
            say("the write endpoint is back")
            if not wait(lambda: server_title("1002") == "written offline" and _pending(db) == 0):
                say("the queued write was not uploaded in time")
                return 1
            say(f"  the queued write reached the server and came back {time.monotonic() - back:.1f} s later "
                "(the upload retries with backoff)")
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(20)
        say(f"stopped the daemon with SIGTERM (exit {code}); items in {db} is a view: synced rows + pending writes")
        return 0 if code == 0 else 1


def _write(db: Path, sql: str) -> None:
    with sqlite3.connect(db) as conn:  # commits on leaving the block
        conn.execute(sql)


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.Error:  # not created yet
        return []


def _pending(db: Path) -> int | None:
    found = _rows(db, "SELECT count(*) FROM _replica_outbox")
    return int(str(found[0][0])) if found else None


def _status(db: Path) -> dict[str, object]:
    [row] = [r for r in read_status(db) if r["name"] == "items"]
    return row
