#!/usr/bin/env python3
"""kill -9 torture of local writes: `replica run` with a writable shape, killed while an app writes.

    python scripts/torture/writes.py [--kills 40] [--seed 1] [--rows 50] [--time-limit 300] [--workdir DIR]

A loopback FakeElectric (this process, 127.0.0.1 only) serves table ``items`` and takes local writes
at ``POST /v1/writes``; now and then it loses an answer after applying a batch or answers 503 first.
An app thread writes to the view ``items`` with the stdlib sqlite3 module, as an app would: each write
inserts a row with a new id or sets a row's title, and every write carries a title seen nowhere else
(its token), recorded once its transaction committed. Each round starts ``replica run`` (the shape
writable, ``[writes] url`` the fake's endpoint), waits a random moment (uploads, confirmations and
syncs in flight) and sends SIGKILL. After every kill, with the daemon dead:

* ``PRAGMA integrity_check`` is ``ok``;
* no committed local write is lost: each token is still in ``_replica_outbox`` or was applied by the
  server; the view shows each row as the app last wrote it;
* nothing is uploaded twice under another name: each token was posted in one batch_id only (retries
  keep the name), and applied once.

At the end the app stops and a last run must empty the outbox and make the view equal the server's table,
then stop on SIGTERM with exit 0. Prints one summary line; exits 0, or prints what broke and exits 1.
This process reads the database with sqlite3 only (one SQLite library per process: design.md §9).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from replica.testing import FakeElectric, serve_in_thread  # noqa: E402
from replica.testing.fake import writes  # noqa: E402

COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "title": {"type": "text"}}


class Broken(Exception):
    pass


class App:
    """Writes through the view; ``last[id]`` is the title each row was last given by a committed write."""

    def __init__(self, db: Path, rows: int, rng: random.Random) -> None:
        self.db, self.rng, self.next_id = db, rng, rows + 1
        self.tokens: list[str] = []
        self.last: dict[int, str] = {}
        self.rows = list(range(1, rows + 1))
        self.lock = threading.Lock()  # held by a write until it is recorded, and by inspect while it reads

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                with self.lock:
                    self.write()
            except sqlite3.OperationalError:  # no view yet (before the first sync), or busy: try again
                time.sleep(0.05)
            time.sleep(self.rng.uniform(0.0, 0.02))

    def write(self) -> None:
        token = f"w{len(self.tokens)}-{self.rng.randrange(10**9)}"
        with sqlite3.connect(self.db, timeout=10) as conn:  # commits on leaving the block
            if self.rng.random() < 0.4:
                row = self.next_id
                conn.execute("INSERT INTO items (id, title) VALUES (?, ?)", (row, token))
            else:
                row = self.rng.choice(self.rows)
                conn.execute("UPDATE items SET title = ? WHERE id = ?", (token, row))
        if row == self.next_id:
            self.next_id += 1
            self.rows.append(row)
        self.tokens.append(token)
        self.last[row] = token


def recording(endpoint: writes.WriteEndpoint, applied: dict[str, list[int]], sent: dict[str, set[str]]) -> None:
    """Note in which batches each token is posted (``sent``), and each transaction that applied it
    (``applied``): the endpoint applies a batch_id once, so a change must never travel in two of them."""
    inner, respond = endpoint._apply, endpoint.respond

    def apply(changes: Sequence[Mapping[str, Any]]) -> int:
        txid = inner(changes)
        for change in changes:
            if (title := change.get("value", {}).get("title")) is not None:
                applied.setdefault(title, []).append(txid)
        return txid

    def posted(body: bytes) -> Any:
        batch = json.loads(body)
        for change in batch["changes"]:
            if (title := change.get("value", {}).get("title")) is not None:
                sent.setdefault(title, set()).add(batch["batch_id"])
        return respond(body)

    endpoint._apply = apply  # type: ignore[method-assign]
    endpoint.respond = posted  # type: ignore[method-assign]


def inspect(db: Path, app: App, applied: Mapping[str, list[int]], sent: Mapping[str, set[str]]) -> None:
    if not db.exists():
        return
    with app.lock, sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        check = conn.execute("PRAGMA integrity_check").fetchall()
        if check != [("ok",)]:
            raise Broken(f"integrity_check: {check}")
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'items'").fetchall():
            return
        waiting = {json.loads(value).get("title") for (value,) in conn.execute('SELECT "value" FROM _replica_outbox')}
        view = dict(conn.execute("SELECT id, title FROM items").fetchall())
        tokens, last = list(app.tokens), dict(app.last)
    lost = [t for t in tokens if t not in waiting and t not in applied]
    if lost:
        raise Broken(f"{len(lost)} committed local writes are neither waiting nor applied: {lost[:5]}")
    renamed = {t: ids for t, ids in list(sent.items()) if len(ids) != 1}
    if renamed:
        raise Broken(f"sent in more than one batch: {dict(list(renamed.items())[:5])}")
    twice = {t: txids for t, txids in list(applied.items()) if len(txids) != 1}
    if twice:
        raise Broken(f"applied more than once, in these transactions: {dict(list(twice.items())[:5])}")
    wrong = {row: (view.get(row), title) for row, title in last.items() if view.get(row) != title}
    if wrong:
        raise Broken(f"the view does not show the app's last writes (shown, written): {dict(list(wrong.items())[:5])}")


def start(config: Path, workdir: Path) -> subprocess.Popen[bytes]:
    log = (workdir / "daemon.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "replica", "run", "-c", str(config)], stdout=log, stderr=log,
                            cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.time_limit
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="replica-writes-"))
    db = workdir / "app.db"
    fake = FakeElectric(long_poll_timeout=1.0)
    fake.create_table("items", COLUMNS, [{"id": str(i), "title": "synced"} for i in range(1, args.rows + 1)])
    endpoint = fake.enable_writes()
    applied: dict[str, list[int]] = {}
    sent: dict[str, set[str]] = {}
    recording(endpoint, applied, sent)
    app, stop = App(db, args.rows, rng), threading.Event()
    counts: Counter[str] = Counter()
    writer = threading.Thread(target=app.run, args=(stop,), daemon=True)
    with serve_in_thread(fake) as server:
        config = workdir / "replica.toml"
        config.write_text(f'url = "{server.url}"\ndatabase = "{db}"\nlisten = "127.0.0.1:0"\n\n[[shapes]]\n'
                          f'table = "items"\nwritable = true\n\n[writes]\nurl = "{server.base_url}{writes.PATH}"\n')
        try:
            for _ in range(args.kills):
                if time.monotonic() > deadline:
                    raise Broken(f"time limit reached after {counts['kills']} kills")
                if rng.random() < 0.3:
                    endpoint.lose_answers += 1  # applied, then the answer is lost: the same batch comes again
                if rng.random() < 0.2:
                    endpoint.failures.append((503, {}))
                daemon = start(config, workdir)
                counts["restarts"] += 1
                if not writer.is_alive():
                    writer.start()
                time.sleep(rng.uniform(0.2, 1.5))
                daemon.send_signal(signal.SIGKILL)
                daemon.wait(10)
                counts["kills"] += 1
                inspect(db, app, applied, sent)
                counts["checks"] += 1
            stop.set()
            writer.join(10)
            endpoint.lose_answers, endpoint.failures[:] = 0, []
            daemon = start(config, workdir)
            counts["restarts"] += 1
            converged = False
            while time.monotonic() < deadline and not converged:
                time.sleep(0.1)
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
                    try:
                        outbox = conn.execute("SELECT count(*) FROM _replica_outbox").fetchone()[0]
                        view = dict(conn.execute("SELECT id, title FROM items").fetchall())
                    except sqlite3.OperationalError:
                        continue
                server_rows = {int(r["id"]): r["title"] for r in fake.rows("items").values()}
                converged = outbox == 0 and view == server_rows
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(20)
            if not converged:
                raise Broken("the last run did not upload everything and converge in time")
            if code != 0:
                raise Broken(f"the last run exited {code} on SIGTERM")
            inspect(db, app, applied, sent)
            missing = [t for t in app.tokens if t not in applied]
            if missing:
                raise Broken(f"{len(missing)} local writes never reached the server: {missing[:5]}")
        except Broken as exc:
            print(f"BROKEN: {exc} (workdir {workdir})", file=sys.stderr)
            return 1
        finally:
            stop.set()
    batches = len(endpoint.txids)
    print(f"kills={counts['kills']} restarts={counts['restarts']} checks={counts['checks']} "
          f"writes={len(app.tokens)} batches={batches} posts={len(endpoint.received)} "
          f"resent={len(endpoint.received) - batches} converged=yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
