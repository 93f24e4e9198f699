#!/usr/bin/env python3
"""kill -9 torture: `replica sync` against a changing loopback FakeElectric, killed at random moments.

    python scripts/torture/kill9.py [--kills 200] [--seed 1] [--rows 3000] [--chunk-bytes 16384]
                                    [--time-limit 900] [--workdir DIR] [--keep] [--subquery]

The fake runs in this process (``serve_in_thread``, 127.0.0.1 only) while a mutator thread keeps
changing its table: inserts, partial updates, deletes and primary-key changes; the main loop
rotates the shape now and then (the syncer then gets a 409 and refetches). Each round starts
``replica sync`` as a subprocess, waits for a moment of the chosen kind — the initial snapshot
(offset=-1), mid-staging (a non-live snapshot chunk), a commit (an up-to-date carrying data was
sent; kill before or while it is published), live (a long-poll) — and sends SIGKILL. After every
kill, with the syncer dead:

* ``PRAGMA integrity_check`` is ``ok``;
* the resume point (the staging position, else the published one) never goes backwards within a
  handle, and only changes handle (or returns to the start) after a rotation (409);
* the published row count in ``_replica_shapes`` equals the table's (rows and checkpoint are atomic,
  R1) and no primary key appears twice.

Kills are classified after the fact from what the syncer had received: ``commit`` when the last
response carried up-to-date with data and its position was not (yet) durable, else by the last
request: ``initial`` (offset=-1), ``staging`` (non-live), ``live``, or ``startup`` (no request yet).

At the end the mutations stop, a last syncer runs until the local table equals the fake's table
(every row, every value, nothing extra), and is stopped with SIGTERM (exit 0). The script prints
one summary line and exits 0, or prints what broke and exits 1. Loopback only; bounded by
``--time-limit``.

``--subquery`` syncs a subquery shape instead (``moves.py``): memberships come and go, rows move
in and out, and two more moments are killed: ``move-in`` (moved-in rows were sent) and
``move-out-staged`` (a move-out was sent in a response without up-to-date).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import apsw  # noqa: E402  (replica's own SQLite; this process runs no Store)

from replica.protocol import wire  # noqa: E402
from replica.testing import FakeElectric, serve_in_thread  # noqa: E402
from replica.typemap.schema import TableSchema  # noqa: E402
from scripts.torture import moves  # noqa: E402

COLUMNS = {
    "id": {"type": "int8", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "done": {"type": "bool"},
    "price": {"type": "numeric"},
    "note": {"type": "text"},
}
TARGETS = ("initial", "staging", "commit", "live")
PHASES = ("startup", "initial", "staging", "commit", "live")


class TortureFailure(Exception):
    pass


def make_row(rng: random.Random, i: int, subquery: bool = False) -> dict[str, str | None]:
    extra = {"project": moves.project(rng)} if subquery else {}
    return extra | {
        "id": str(i),
        "title": f"row {i} " + "x" * rng.randrange(0, 40),
        "done": rng.choice(["t", "f"]),
        "price": f"{rng.randrange(0, 10**6)}.{rng.randrange(0, 100):02d}",
        "note": None if rng.random() < 0.2 else "ünïcödé ✓ " + str(rng.random()),
    }


class Mutator(threading.Thread):
    """Keeps changing the fake's table while enabled: inserts, partial updates, deletes, PK changes."""

    def __init__(self, fake: FakeElectric, rng: random.Random, ids: set[int], next_id: int,
                 subquery: bool = False) -> None:
        super().__init__(daemon=True, name="mutator")
        self.fake, self.rng, self.ids, self.next_id = fake, rng, ids, next_id
        self.subquery = subquery
        self.memberships = moves.Memberships(fake, rng) if subquery else None
        self.enabled = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()  # held per operation; rotations take it to stay between operations
        self.counts: Counter[str] = Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.done.is_set():
                if not self.enabled.wait(0.05):
                    continue
                with self.lock:
                    self.step()
                time.sleep(self.rng.uniform(0.002, 0.02))
        except BaseException as exc:  # reported by the main loop
            self.error = exc

    def step(self) -> None:
        rng, fake = self.rng, self.fake
        roll = rng.random()
        if self.memberships is not None and rng.random() < 0.25 and len(self.ids) >= 10:
            self.memberships.step(self.ids, self.counts)
        elif roll < 0.35 or len(self.ids) < 10:
            i = self.next_id
            self.next_id += 1
            fake.insert("items", make_row(rng, i, self.subquery))
            self.ids.add(i)
            self.counts["insert"] += 1
        elif roll < 0.7:
            i = rng.choice(sorted(self.ids))
            change = rng.choice([{"title": f"updated {rng.random()}"}, {"done": rng.choice(["t", "f"])},
                                 {"note": None}, {"price": "0.01", "note": "ß"}])
            fake.update("items", {"id": str(i), **change})
            self.counts["update"] += 1
        elif roll < 0.85:
            i = rng.choice(sorted(self.ids))
            fake.delete("items", {"id": str(i)})
            self.ids.discard(i)
            self.counts["delete"] += 1
        elif roll < 0.95:
            old, new = rng.choice(sorted(self.ids)), self.next_id
            self.next_id += 1
            fake.update("items", {"id": str(old)}, new={"id": str(new), "title": f"moved from {old}"})
            self.ids.discard(old)
            self.ids.add(new)
            self.counts["pk_change"] += 1
        else:
            with fake.transaction() as tx:  # a multi-operation transaction
                for _ in range(rng.randrange(2, 6)):
                    i = self.next_id
                    self.next_id += 1
                    tx.insert("items", make_row(rng, i, self.subquery))
                    self.ids.add(i)
                victim = rng.choice(sorted(self.ids))
                tx.delete("items", {"id": str(victim)})
                self.ids.discard(victim)
            self.counts["transaction"] += 1


class Exchanges:
    """What the fake answered, in order: (time, params, status, up_to_date, has_data, offset,
    moved-in rows, a move-out event)."""

    def __init__(self, fake: FakeElectric) -> None:
        self.items: list[tuple[float, dict[str, str], int, bool, bool, str | None, bool, bool]] = []
        self.lock = threading.Lock()
        original = fake.exchange

        async def exchange(method: str, target: str, headers: Any, **kwargs: Any) -> Any:
            response, fault = await original(method, target, headers, **kwargs)
            params = {k: v[-1] for k, v in parse_qs(urlsplit(target).query, keep_blank_values=True).items()}
            h = response.headers
            entry = (
                time.monotonic(),
                params,
                response.status,
                wire.H_UP_TO_DATE in h,
                h.get(wire.H_HAS_DATA) == "true",
                h.get(wire.H_OFFSET),
                *moves.flags(response.body),
            )
            with self.lock:
                self.items.append(entry)
            return response, fault

        fake.exchange = exchange  # type: ignore[method-assign]

    def since(self, start: int) -> list[tuple[float, dict[str, str], int, bool, bool, str | None, bool, bool]]:
        with self.lock:
            return self.items[start:]

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)


def request_kind(params: dict[str, str]) -> str:
    if params.get("offset", "-1") == "-1":
        return "initial"
    return "live" if params.get("live") == "true" else "staging"


def open_db(path: Path) -> apsw.Connection:
    # Read-write so that a WAL left by the killed writer is recovered like a restart would;
    # nothing else writes now (the syncer is dead).
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    conn.set_busy_timeout(5000)
    return conn


def inspect(path: Path) -> dict[str, Any]:
    """Integrity, resume point and consistency of the database, with no syncer running."""
    if not path.exists():
        return {"exists": False}
    conn = open_db(path)
    try:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        info: dict[str, Any] = {"exists": True, "integrity": integrity, "published": None, "stage": None}
        if "_replica_shapes" in tables:
            row = conn.execute(
                'SELECT "handle", "offset", "rows" FROM "_replica_shapes" WHERE "name" = ?', ("items",)
            ).fetchone()
            if row is not None and row[1] is not None:
                info["published"] = (row[0], row[1], row[2])
        if "_replica_stages" in tables:
            row = conn.execute('SELECT "handle", "offset" FROM "_replica_stages" WHERE "name" = ?', ("items",)).fetchone()
            if row is not None:
                info["stage"] = (row[0], row[1])
        if "items" in tables:
            count, distinct = conn.execute('SELECT count(*), count(DISTINCT "id") FROM "items"').fetchone()
            info["count"], info["distinct"] = count, distinct
        return info
    finally:
        conn.close()


def resume_point(info: dict[str, Any]) -> tuple[str | None, str] | None:
    if info.get("stage") is not None:
        return info["stage"]
    if info.get("published") is not None:
        handle, offset, _rows = info["published"]
        return handle, offset
    return None


def local_rows(path: Path) -> dict[tuple, dict[str, Any]]:
    conn = open_db(path)
    try:
        columns = [c[1] for c in conn.execute('PRAGMA table_info("items")')]
        return {(r[0],): dict(zip(columns, r, strict=True)) for r in conn.execute('SELECT * FROM "items"')}
    finally:
        conn.close()


def expected_rows(fake: FakeElectric, subquery: bool = False) -> dict[tuple, dict[str, Any]]:
    schema = TableSchema.from_electric(fake.schema("items"))
    result = {}
    for row in fake.rows("items", *((moves.WHERE, moves.PARAMS) if subquery else ())).values():
        converted = schema.convert_row(row)
        result[tuple(converted[c] for c in schema.pk)] = converted
    return result


class Torture:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="replica-kill9-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.db = self.work / "torture.db"
        self.stderr_path = self.work / "syncer.stderr"
        self.phases: Counter[str] = Counter()
        self.targets: Counter[str] = Counter()
        self.restarts = 0
        self.rotations = 0
        self.integrity_checks = 0
        self.last_point: tuple[str | None, str] | None = None
        self.rotations_at_last_point = 0
        self.deadline = time.monotonic() + args.time_limit

    # --- the syncer ---

    def spawn(self, url: str) -> subprocess.Popen[bytes]:
        self.restarts += 1
        with open(self.stderr_path, "ab") as err:
            err.write(f"--- start {self.restarts}\n".encode())
            return subprocess.Popen(
                [sys.executable, "-m", "replica", "sync", url, "--table", "items", "--db", str(self.db),
                 *(["--where", moves.WHERE, "--param", "1=1"] if self.args.subquery else [])],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            raise TortureFailure(f"the syncer exited by itself with {proc.returncode}:\n{self.stderr_tail()}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stderr_tail(self) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    # --- choosing the moment ---

    def wait_for(self, exchanges: Exchanges, start: int, proc: subprocess.Popen[bytes], pred: Any,
                 timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise TortureFailure(f"the syncer exited by itself with {proc.returncode}:\n{self.stderr_tail()}")
            if pred(exchanges.since(start)):
                return True
            time.sleep(0.0005)
        return False

    def needs_snapshot(self) -> bool:
        info = inspect(self.db)
        return info.get("published") is None and info.get("stage") is None

    def rotate(self, fake: FakeElectric, mutator: Mutator) -> None:
        with mutator.lock:
            fake.rotate("items")
        self.rotations += 1

    def one_round(self, fake: FakeElectric, url: str, exchanges: Exchanges, mutator: Mutator, target: str) -> None:
        rng = self.rng
        self.targets[target] += 1
        info = inspect(self.db)
        staged = info.get("stage") is not None
        fresh = info.get("published") is None and not staged
        if target == "initial" and not fresh:
            self.rotate(fake, mutator)  # the next start gets a 409 and refetches: a snapshot to kill
        elif target == "commit" and not fresh and rng.random() < 0.7:
            self.rotate(fake, mutator)  # a big publish at the end of the refetch (else a live one)
        elif target == "staging" and not staged:
            self.rotate(fake, mutator)
        elif rng.random() < 0.05:
            self.rotate(fake, mutator)
        start = len(exchanges)
        mutator.enabled.set()
        proc = self.spawn(url)
        try:
            if target == "initial":
                self.wait_for(exchanges, start, proc, lambda ex: any(request_kind(e[1]) == "initial" for e in ex))
                time.sleep(rng.uniform(0, 0.004))
            elif target == "staging":
                nth = rng.randrange(1, 8)
                self.wait_for(exchanges, start, proc,
                              lambda ex: sum(request_kind(e[1]) == "staging" and e[2] == 200 for e in ex) >= nth
                              or any(request_kind(e[1]) == "live" for e in ex))
                time.sleep(rng.uniform(0, 0.01))
            elif target == "commit":
                self.wait_for(exchanges, start, proc,
                              lambda ex: any(e[2] == 200 and e[3] and e[4] for e in ex))
                time.sleep(rng.uniform(0, 0.08))
            elif target == "move-in":
                self.wait_for(exchanges, start, proc, lambda ex: any(e[2] == 200 and e[6] for e in ex))
                time.sleep(rng.uniform(0, 0.02))
            elif target == "move-out-staged":
                self.wait_for(exchanges, start, proc, lambda ex: any(e[2] == 200 and e[7] and not e[3] for e in ex))
            else:
                self.wait_for(exchanges, start, proc, lambda ex: any(request_kind(e[1]) == "live" for e in ex))
                time.sleep(rng.uniform(0, 0.4))
        finally:
            self.kill(proc)
        seen = exchanges.since(start)
        info = self.check_after_kill(seen)
        self.phases[self.classify(seen, info)] += 1

    def classify(self, seen: list[Any], info: dict[str, Any]) -> str:
        if not seen:
            return "startup"
        _t, params, status, up_to_date, has_data, offset, moved_in, moved_out = seen[-1]
        if status == 200 and moved_out and not up_to_date:
            return "move-out-staged"
        if status == 200 and moved_in:
            return "move-in"
        if status == 200 and up_to_date and has_data:
            published = info.get("published")
            if published is None or published[1] != offset:
                return "commit"  # the up-to-date arrived; its publish was not durable when killed
            return "live"  # published, then killed before the next request went out
        return request_kind(params)

    # --- the checks ---

    def check_after_kill(self, seen: list[Any]) -> dict[str, Any]:
        info = inspect(self.db)
        if not info.get("exists"):
            return info
        self.integrity_checks += 1
        if info["integrity"] != ["ok"]:
            raise TortureFailure(f"integrity_check after kill {self.kills}: {info['integrity'][:5]}")
        if "count" in info and info["count"] != info["distinct"]:
            raise TortureFailure(f"duplicate primary keys after kill {self.kills}: {info}")
        published = info.get("published")
        if published is not None and "count" in info and published[2] != info["count"]:
            raise TortureFailure(f"_replica_shapes.rows {published[2]} != table rows {info['count']}: torn commit")
        point = resume_point(info)
        previous = self.last_point
        rotated = self.rotations > self.rotations_at_last_point
        if previous is not None:
            if point is None:
                if not rotated:
                    raise TortureFailure(f"the resume point vanished without a 409 (was {previous})")
            elif point[0] == previous[0]:
                if wire.Offset.parse(point[1]) < wire.Offset.parse(previous[1]):
                    raise TortureFailure(f"the resume point went backwards: {previous} -> {point}")
            elif not rotated:
                raise TortureFailure(f"the handle changed without a 409: {previous} -> {point}")
        if point != previous:
            self.last_point = point
            self.rotations_at_last_point = self.rotations
        return info

    # --- the run ---

    @property
    def kills(self) -> int:
        return sum(self.phases.values())

    def run(self) -> int:
        args, rng = self.args, self.rng
        fake = FakeElectric(chunk_bytes=args.chunk_bytes, long_poll_timeout=0.5, seed=args.seed)
        ids = set(range(1, args.rows + 1))
        fake.create_table("items", moves.columns(COLUMNS) if args.subquery else COLUMNS,
                          rows=[make_row(rng, i, args.subquery) for i in sorted(ids)])
        if args.subquery:
            moves.setup(fake, rng)
        exchanges = Exchanges(fake)
        mutator = Mutator(fake, random.Random(args.seed + 1), ids, args.rows + 1, args.subquery)
        mutator.start()
        started = time.monotonic()
        try:
            with serve_in_thread(fake) as server:
                order = [*TARGETS, *(moves.TARGETS if args.subquery else ())]
                while self.kills < args.kills:
                    if time.monotonic() > self.deadline:
                        raise TortureFailure(f"time limit of {args.time_limit:g} s reached after {self.kills} kills")
                    if mutator.error is not None:
                        raise TortureFailure(f"the mutator failed: {mutator.error!r}")
                    target = order[self.kills % len(order)] if rng.random() < 0.7 else rng.choice(order)
                    self.one_round(fake, server.url, exchanges, mutator, target)
                final_rows = self.converge(fake, server.url, exchanges, mutator)
        finally:
            mutator.done.set()
            mutator.enabled.set()
            mutator.join(5)
        elapsed = time.monotonic() - started
        by_phase = " ".join(f"{p}={self.phases[p]}" for p in (*PHASES, *(moves.TARGETS if args.subquery else ())))
        mutations = sum(mutator.counts.values())
        print(
            f"kill9 torture: seed={args.seed} kills={self.kills} ({by_phase}) restarts={self.restarts} "
            f"409s={self.rotations} integrity_checks={self.integrity_checks} ok mutations={mutations} "
            f"final_rows={final_rows} converged=yes elapsed={elapsed:.1f}s",
            flush=True,
        )
        return 0

    def converge(self, fake: FakeElectric, url: str, exchanges: Exchanges, mutator: Mutator) -> int:
        """Stop changing the source; a last syncer must make the local table equal to it."""
        mutator.enabled.clear()
        with mutator.lock:  # any operation in progress has finished
            pass
        if self.args.subquery:
            moves.before_final_sync(fake, mutator.ids)
        want = expected_rows(fake, self.args.subquery)
        asked = len(fake.requests)
        proc = self.spawn(url)
        try:
            deadline = time.monotonic() + self.args.converge_timeout
            while True:
                if proc.poll() is not None:
                    raise TortureFailure(f"the final syncer exited with {proc.returncode}:\n{self.stderr_tail()}")
                if self.db.exists():
                    try:
                        got = local_rows(self.db)
                    except apsw.Error:
                        got = {}
                    # ...and the syncer is up (it has asked the server), so SIGTERM meets its handler.
                    if got == want and len(fake.requests) > asked:
                        break
                if time.monotonic() > deadline:
                    got = local_rows(self.db) if self.db.exists() else {}
                    missing = sorted(set(want) - set(got))[:5]
                    extra = sorted(set(got) - set(want))[:5]
                    changed = [k for k in want if k in got and got[k] != want[k]][:5]
                    raise TortureFailure(
                        f"did not converge in {self.args.converge_timeout:g} s: {len(got)} local rows vs "
                        f"{len(want)}; missing {missing} extra {extra} differing {changed}\n{self.stderr_tail()}"
                    )
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise TortureFailure("the final syncer did not stop within 10 s of SIGTERM") from None
                if code != 0:
                    raise TortureFailure(f"the final syncer exited {code} on SIGTERM:\n{self.stderr_tail()}")
        info = inspect(self.db)
        self.integrity_checks += 1
        if info["integrity"] != ["ok"]:
            raise TortureFailure(f"final integrity_check: {info['integrity'][:5]}")
        if info.get("stage") is not None:
            raise TortureFailure(f"a stage was left behind after convergence: {info['stage']}")
        published = info.get("published")
        if published is None or published[2] != len(want) or info["count"] != len(want):
            raise TortureFailure(f"final bookkeeping disagrees: {info} vs {len(want)} rows")
        if local_rows(self.db) != want:
            raise TortureFailure("the table changed after convergence")
        return len(want)


def _failure(exc: BaseException) -> TortureFailure | None:
    """The TortureFailure inside ``exc`` (task groups wrap what crosses them), if any."""
    if isinstance(exc, TortureFailure):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _failure(inner)
            if found is not None:
                return found
    if exc.__context__ is not None and exc.__context__ is not exc:
        return _failure(exc.__context__) if isinstance(exc.__context__, (TortureFailure, BaseExceptionGroup)) else None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=3000, help="rows in the table at the start")
    parser.add_argument("--chunk-bytes", type=int, default=16384, help="the fake's response size (small: many chunks)")
    parser.add_argument("--time-limit", type=float, default=900.0, help="give up (exit 1) after this many seconds")
    parser.add_argument("--converge-timeout", type=float, default=60.0)
    parser.add_argument("--workdir", help="where the database goes (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--subquery", action="store_true", help="sync a subquery shape (moves.py): rows move in and out")
    args = parser.parse_args(argv)
    torture = Torture(args)
    try:
        return torture.run()
    except (TortureFailure, BaseExceptionGroup) as raised:
        exc = _failure(raised)
        if exc is None:
            raise
        print(f"kill9 torture FAILED (seed={args.seed}, after {torture.kills} kills, workdir {torture.work}): {exc}",
              file=sys.stderr, flush=True)
        args.keep = True
        return 1
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(torture.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
