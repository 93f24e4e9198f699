#!/usr/bin/env python3
"""kill -9 torture of a consistency group: `replica run` with two shapes, killed at random moments (R11).

    python scripts/torture/groups.py [--kills 100] [--seed 1] [--rows 300] [--chunk-bytes 4096]
                                     [--time-limit 600] [--workdir DIR]

A loopback FakeElectric (this process, 127.0.0.1 only) serves tables ``ta`` and ``tb``; a mutator thread
moves amounts between a row of one and a row of the other in single transactions, inserts and deletes
empty rows in both, so the sum of both tables never changes in the source; the main loop rotates one
table now and then (409). Each round starts ``replica run`` on a config with both shapes (one group),
waits a random moment (often mid-snapshot, mid-catch-up, live) and sends SIGKILL. After every kill:

* ``PRAGMA integrity_check`` is ``ok``;
* when both tables are visible, their sums add up to the source's constant total (never half a transfer),
  and the group's LSN in ``_replica_groups`` never went backwards.

At the end the mutations stop and a last run must make both tables equal the source, row for row, and
stop on SIGTERM with exit 0. Prints one summary line; exits 0, or prints what broke and exits 1.
"""

from __future__ import annotations

import argparse
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import apsw  # noqa: E402  (read-only here; this process runs no Store)

from replica.testing import FakeElectric, serve_in_thread  # noqa: E402

COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "amount": {"type": "int8"}}
TABLES = ("ta", "tb")
EACH = 100


class Broken(Exception):
    pass


def mutate(fake: FakeElectric, rng: random.Random, stop: threading.Event, counts: dict[str, int]) -> None:
    while not stop.is_set():
        rows = {t: {int(r["id"] or 0): int(r["amount"] or 0) for r in fake.rows(t).values()} for t in TABLES}
        a, b = rng.sample(TABLES, 2)
        with fake.transaction() as tx:
            if rows[a] and rows[b] and rng.random() < 0.8:
                i, j = rng.choice(list(rows[a])), rng.choice(list(rows[b]))
                moved = rng.randint(1, 20)
                tx.update(a, {"id": str(i), "amount": str(rows[a][i] - moved)})
                tx.update(b, {"id": str(j), "amount": str(rows[b][j] + moved)})
            else:  # an empty row comes or goes in both tables: the total stays
                for table in TABLES:
                    empty = [k for k, v in rows[table].items() if v == 0]
                    if empty and rng.random() < 0.5:
                        tx.delete(table, {"id": str(rng.choice(empty))})
                    else:
                        tx.insert(table, {"id": str(max(rows[table], default=0) + 1), "amount": "0"})
        counts["mutations"] += 1
        time.sleep(rng.uniform(0.0, 0.01))


def inspect(db: Path) -> tuple[int | None, int | None]:
    """(sum of both tables if both are visible, the group's LSN) — raises Broken on corruption."""
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchall()
        if check != [("ok",)]:
            raise Broken(f"integrity_check: {check}")
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        total = None
        if set(TABLES) <= names:
            total = conn.execute("SELECT (SELECT coalesce(sum(amount), 0) FROM ta) + "
                                 "(SELECT coalesce(sum(amount), 0) FROM tb)").fetchone()[0]
        elif names & set(TABLES):
            raise Broken(f"one table of the group is visible without the other: {sorted(names & set(TABLES))}")
        lsn = None
        if "_replica_groups" in names:
            row = conn.execute('SELECT "lsn" FROM "_replica_groups" WHERE "name" = \'default\'').fetchone()
            lsn = None if row is None else int(row[0])
        return total, lsn
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:  # not listening yet, or 503 (HTTPError is an OSError)
        return False


def local(db: Path, table: str) -> dict[int, int]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {int(i): int(a) for i, a in conn.execute(f"SELECT id, amount FROM {table}")}
    except apsw.SQLError:
        return {}
    finally:
        conn.close()


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="replica-groups-"))
    db, config = work / "app.db", work / "replica.toml"
    fake = FakeElectric(chunk_bytes=args.chunk_bytes, long_poll_timeout=0.5)
    for table in TABLES:
        fake.create_table(table, COLUMNS, rows=[{"id": str(i), "amount": str(EACH)} for i in range(1, args.rows + 1)])
    total = 2 * args.rows * EACH
    counts = {"kills": 0, "restarts": 0, "checks": 0, "mutations": 0, "rotations": 0, "both_visible": 0}
    stop = threading.Event()
    started, last_lsn = time.monotonic(), None
    log = open(work / "replica.log", "ab")
    with serve_in_thread(fake) as server:
        config.write_text(f'url = "{server.url}"\ndatabase = "app.db"\nlisten = "127.0.0.1:0"\n'
                          + "".join(f'[[shapes]]\ntable = "{t}"\n' for t in TABLES))
        mutator = threading.Thread(target=mutate, args=(fake, rng, stop, counts), daemon=True)
        mutator.start()
        try:
            for _ in range(args.kills):
                if time.monotonic() - started > args.time_limit:
                    raise Broken(f"time limit of {args.time_limit:g} s reached after {counts['kills']} kills")
                if rng.random() < 0.15:
                    fake.rotate(rng.choice(TABLES))
                    counts["rotations"] += 1
                proc = subprocess.Popen([sys.executable, "-m", "replica", "run", "-c", str(config)], stderr=log)
                counts["restarts"] += 1
                time.sleep(rng.choice([rng.uniform(0.05, 0.4), rng.uniform(0.4, 1.5)]))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                counts["kills"] += 1
                if not db.exists():
                    continue
                found, lsn = inspect(db)
                counts["checks"] += 1
                if found is not None:
                    counts["both_visible"] += 1
                    if found != total:
                        raise Broken(f"after kill {counts['kills']}: the tables sum to {found}, never {total}")
                if lsn is not None and last_lsn is not None and lsn < last_lsn:
                    raise Broken(f"the group's LSN went back from {last_lsn} to {lsn}")
                last_lsn = lsn if lsn is not None else last_lsn
        finally:
            stop.set()
            mutator.join()
        # The last run listens where it can be asked whether it is ready: the rows may already match
        # from the killed run, and a SIGTERM before its handlers are set would end it with -15.
        port = free_port()
        config.write_text(config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
        proc = subprocess.Popen([sys.executable, "-m", "replica", "run", "-c", str(config)], stderr=log)
        counts["restarts"] += 1
        deadline = time.monotonic() + args.converge_timeout
        want = {t: {int(r["id"] or 0): int(r["amount"] or 0) for r in fake.rows(t).values()} for t in TABLES}
        while not ready(port) or any(local(db, t) != want[t] for t in TABLES):
            if time.monotonic() > deadline:
                proc.kill()
                raise Broken("the last run did not converge to the source")
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        if proc.wait(30) != 0:
            raise Broken(f"the last run exited {proc.returncode} on SIGTERM")
    log.close()
    print(" ".join(f"{k}={v}" for k, v in counts.items())
          + f" converged=yes elapsed={time.monotonic() - started:.1f}s workdir={work}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=300, help="rows in each table at the start")
    parser.add_argument("--chunk-bytes", type=int, default=4096, help="the fake's response size (small: many chunks)")
    parser.add_argument("--time-limit", type=float, default=600.0)
    parser.add_argument("--converge-timeout", type=float, default=60.0)
    parser.add_argument("--workdir", help="where the database goes (default: a new temporary directory)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Broken as exc:
        print(f"groups torture: BROKEN: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
