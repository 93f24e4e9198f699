"""What a writable shape costs next to a plain one (design.md §3j), same run, A/B alternating.

One database holds the same N rows twice: a plain shape's table and a writable shape's view (its synced
table and pending table). Each round times, on both, a full scan, point lookups by key, and single-row
updates in one transaction (the view's go through its triggers into the outbox; the plain table's are
plain UPDATEs, the floor); and the writable publish of one change with P keys pending (the refold).
Prints one JSON line per measure: medians of the rounds and the median of each round's own ratio.

    .venv/bin/python scripts/bench/local_writes.py [--rows 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import apsw

from replica.protocol import Checkpoint, Commit, Shape
from replica.protocol.messages import Change
from replica.protocol.wire import build_key
from replica.store.store import Store

SCHEMA = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "title": {"type": "text"},
          "n": {"type": "int8"}, "done": {"type": "bool"}}


def changes(table: str, ids: range, title: str) -> tuple[Change, ...]:
    return tuple(Change("insert", build_key("public", table, [str(i)]), {"id": str(i), "title": f"{title} {i}",
                        "n": str(i * 7), "done": "t" if i % 2 else "f"}, {"operation": "insert"}) for i in ids)


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def scan(app: apsw.Connection, table: str) -> None:
    app.execute(f'SELECT * FROM "{table}"').fetchall()


def lookup(app: apsw.Connection, table: str, keys: list[int]) -> None:
    for k in keys:
        app.execute(f'SELECT * FROM "{table}" WHERE id = ?', (k,)).fetchall()


def update(app: apsw.Connection, table: str, keys: list[int]) -> None:
    with app:  # one transaction, one row per statement
        for k in keys:
            app.execute(f'UPDATE "{table}" SET n = n + 1 WHERE id = ?', (k,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    db = tmp / "bench.db"
    plain, writable = Shape("plain"), Shape("view", writable=True)
    with Store(db) as store:
        for shape in (plain, writable):
            store.apply(Commit(shape, changes(shape.table, range(args.rows), "row"),
                               Checkpoint("h", "0_0", None, SCHEMA, True), True, True))
    app = apsw.Connection(str(db))
    keys = list(range(0, args.rows, max(1, args.rows // 1000)))
    results: dict[str, list[tuple[float, float]]] = {"scan": [], "lookup": [], "update": []}
    for round_ in range(args.rounds):
        order = [plain, writable] if round_ % 2 == 0 else [writable, plain]
        timings: dict[str, dict[str, float]] = {name: {} for name in results}
        for shape in order:
            table = shape.local_name
            timings["scan"][table] = timed(partial(scan, app, table))
            timings["lookup"][table] = timed(partial(lookup, app, table, keys))
            timings["update"][table] = timed(partial(update, app, table, keys))
        for name in results:
            results[name].append((timings[name]["plain"], timings[name]["view"]))
        with app:  # the next round starts with no pending rows, as after a confirmation
            app.execute('DELETE FROM "_replica_outbox"')
            app.execute('DELETE FROM "_replica_pending_view"')
    env = {"rows": args.rows, "ops": len(keys), "rounds": args.rounds, "sqlite": apsw.sqlite_lib_version(),
           "python": platform.python_version()}
    for name, pairs in results.items():
        print(json.dumps({"measure": name, **env, "plain_s": statistics.median(p for p, _ in pairs),
                          "view_s": statistics.median(v for _, v in pairs),
                          "view/plain": statistics.median(v / p for p, v in pairs),
                          "min": min(v / p for p, v in pairs), "max": max(v / p for p, v in pairs)}))
    # The refold in a publish: one server change while P keys have pending changes.
    offsets = iter(range(1, 1_000_000))
    for pending in (0, 100, 1000):
        with app:
            app.execute('DELETE FROM "_replica_outbox"')
            app.execute('DELETE FROM "_replica_pending_view"')
            for k in range(pending):
                app.execute('UPDATE "view" SET title = ? WHERE id = ?', ("local", k))
        times = []
        with Store(db) as store:
            for offset in (next(offsets) for _ in range(args.rounds)):
                commit = Commit(writable, changes("view", range(args.rows - 1, args.rows), f"v{offset}"),
                                Checkpoint("h", f"{offset}_0", None, SCHEMA, True), True, False)
                times.append(timed(lambda c=commit: store.apply(c)))
        print(json.dumps({"measure": "publish_one_change", "pending_keys": pending, **env,
                          "median_s": statistics.median(times)}))
    app.close()


if __name__ == "__main__":
    sys.exit(main())
