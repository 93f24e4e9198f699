"""Latency from a committed Postgres write to the row being visible in SQLite.

Bounded and loopback only: starts a throwaway Postgres cluster (replica.testing.pgcluster), runs
the Postgres dev server in a child process (`python -m replica.testing serve --postgres`), syncs
one table with `replica.Replica` in this process, then times N single-row INSERTs: from the
moment COMMIT returns to the moment replica's commit of that row is visible to a reader (checked
with a fresh read through replica.connect). Prints one JSON line.

    .venv/bin/python scripts/bench/pg_latency.py [--writes 300] [--pause 0.02]

The dev server polls its replication slot every 5 ms when idle, so that is the floor of p50.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from replica import Replica, Shape, connect
from replica.testing.postgres.cluster import PgCluster


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=300, help="timed inserts (default: %(default)s)")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between writes (default: %(default)s)")
    args = parser.parse_args()
    if not 1 <= args.writes <= 10_000:
        parser.error("--writes must be 1..10000")

    with PgCluster.start() as cluster, tempfile.TemporaryDirectory() as tmp:
        dsn = cluster.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int8 PRIMARY KEY, title text, at timestamptz DEFAULT now())")
            server = subprocess.Popen([sys.executable, "-m", "replica.testing", "serve", "--postgres", dsn],
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert server.stdout is not None
                url = server.stdout.readline().strip()
                db = Path(tmp) / "bench.db"
                committed = threading.Condition()
                visible_rows = 0

                def on_commit(_applied: object) -> None:
                    nonlocal visible_rows
                    reader = connect(db)  # what any reader sees now
                    try:
                        (count,) = reader.execute("SELECT count(*) FROM items").fetchone() or (0,)
                    finally:
                        reader.close()
                    with committed:
                        visible_rows = int(count)
                        committed.notify_all()

                replica = Replica(db, url, Shape("items"), on_commit=on_commit, process="inline")
                replica.start()
                latencies: list[float] = []
                try:
                    if not replica.wait_until_synced(30):
                        raise SystemExit(f"replica did not sync: {replica.status()}")
                    for i in range(1, args.writes + 1):
                        conn.execute("INSERT INTO items (id, title) VALUES (%s, %s)", [i, f"item {i}"])
                        start = time.perf_counter()  # COMMIT has returned (autocommit)
                        with committed:
                            if not committed.wait_for(lambda i=i: visible_rows >= i, timeout=10):
                                raise SystemExit(f"write {i} not visible after 10 s")
                        latencies.append((time.perf_counter() - start) * 1000)
                        time.sleep(args.pause)
                finally:
                    replica.stop()
            finally:
                server.terminate()
                server.wait(10)
                if server.stdout is not None:
                    server.stdout.close()

    result = {
        "bench": "pg_latency",
        "writes": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
        "python": platform.python_version(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
