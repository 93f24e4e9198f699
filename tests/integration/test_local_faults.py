"""Local faults: a full disk, a database locked by another process, a read-only database, and a
second syncer on the same file. replica pauses and retries what can heal (without losing its
checkpoint), and refuses with a clear error what cannot.

Other processes open the database with Python's sqlite3 (a different SQLite than apsw's), so
they run as subprocesses: two SQLite copies in one process corrupt each other's WAL state.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from oracle import expected, local, pk_of

from replica import Backoff, Replica, Shape, connect
from replica.errors import StoreError
from replica.protocol import Response, ShapeLog
from replica.store.store import Store
from replica.testing import FakeElectric, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "title": {"type": "text"}}


def row(i: int, size: int = 10) -> dict[str, str]:
    return {"id": str(i), "title": f"{i:06d}" + "x" * size}


def make_fake(n: int) -> FakeElectric:
    fake = FakeElectric(long_poll_timeout=0.3, chunk_bytes=4096)
    fake.create_table("items", COLUMNS, rows=[row(i) for i in range(1, n + 1)])
    return fake


def converged(fake: FakeElectric, db: Path) -> bool:
    return local(db, "items", pk_of(fake, "items")) == expected(fake, "items")


def wait(check, timeout: float = 10.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def integrity(db: Path) -> list[str]:
    conn = connect(db)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def stored_offset(db: Path) -> str | None:
    conn = connect(db)
    try:
        found = conn.execute('SELECT "offset" FROM "_replica_shapes" WHERE "name" = ?', ("items",)).fetchone()
        return None if found is None else found[0]
    finally:
        conn.close()


@dataclass(frozen=True)
class Pace(Backoff):
    waits: list[float] = field(default_factory=list, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        self.waits.append(0.02)
        return 0.02


@pytest.mark.integration
@pytest.mark.guarantee("R1")
@pytest.mark.guarantee("R3")
def test_a_full_disk_pauses_and_resumes_without_losing_the_checkpoint(tmp_path: Path) -> None:
    db = tmp_path / "replica.db"
    fake = make_fake(50)
    pace = Pace()
    replica = Replica(db, "http://fake/v1/shape", Shape("items"), transport=httpx.MockTransport(fake.handler),
                      backoff=pace)
    replica.start()
    try:
        assert replica.wait_until_synced(10)
        before_rows, before_offset = local(db, "items", ["id"]), stored_offset(db)
        conn = replica._store.connection  # type: ignore[union-attr]  # the writer's own connection
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite now answers SQLITE_FULL on growth
        with fake.transaction() as tx:
            for i in range(1000, 1400):
                tx.insert("items", row(i, size=400))
        wait(lambda: len(pace.waits) >= 3, what="retries on a full disk")
        (state,) = replica.status()
        assert state.state == "offline" and "full" in (state.error or ""), state
        assert local(db, "items", ["id"]) == before_rows, "rows changed while the disk was full"
        assert stored_offset(db) == before_offset, "the checkpoint moved while the disk was full"
        assert integrity(db) == ["ok"]
        conn.execute("PRAGMA max_page_count = 1073741823")  # space is back
        wait(lambda: converged(fake, db) and replica.status()[0].state == "live", what="recovery")
    finally:
        replica.stop()
    assert integrity(db) == ["ok"]


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN IMMEDIATE")
conn.execute("CREATE TABLE IF NOT EXISTS app_notes (note TEXT)")
conn.execute("INSERT INTO app_notes VALUES ('the app writes its own table')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
conn.close()
"""


@contextmanager
def locked_by_another_process(db: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)], stdout=subprocess.PIPE,
                          text=True) as locker:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        yield locker
    assert locker.returncode == 0


@pytest.mark.integration
@pytest.mark.guarantee("R1")
def test_a_database_locked_by_another_process_is_waited_for_and_never_corrupted(tmp_path: Path) -> None:
    db = tmp_path / "replica.db"
    fake = make_fake(20)
    with serve_in_thread(fake) as server:
        replica = Replica(db, server.url, Shape("items"), backoff=Pace())
        replica.start()
        try:
            assert replica.wait_until_synced(10)
            with locked_by_another_process(db, 1.0):
                started = time.monotonic()
                fake.insert("items", row(500))
                fake.delete("items", {"id": "3"})
                time.sleep(0.5)
                assert not converged(fake, db), "a commit went through another process's write lock"
            wait(lambda: converged(fake, db), what="the commit after the lock")
            assert time.monotonic() - started >= 0.9
            (state,) = replica.status()
            assert state.error is None, "a lock shorter than the busy timeout must not be an error"
        finally:
            replica.stop()
    assert integrity(db) == ["ok"]
    conn = connect(db)
    assert conn.execute("SELECT count(*) FROM app_notes").fetchone() == (1,)  # the app's write survived
    conn.close()


@pytest.mark.integration
@pytest.mark.guarantee("R1")
def test_a_lock_longer_than_the_busy_timeout_is_a_store_error_that_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "replica.db"
    fake = make_fake(5)
    shape = Shape("items")
    with Store(db, busy_timeout=0.2) as store:
        log = ShapeLog(shape, store.checkpoint(shape))
        def answer() -> Response:
            request = log.next_request()
            query = "&".join(f"{k}={v}" for k, v in request.params)
            got = fake.respond("GET", f"/v1/shape?{query}")
            return Response(got.status, dict(got.headers), got.body)

        while not log.live:
            commit = log.receive(answer())
            if commit is not None:
                store.apply(commit)
        before = store.checkpoint(shape)
        fake.insert("items", row(9))
        log.live = False  # ask non-live: the answer comes at once
        commit = log.receive(answer())
        assert commit is not None
        with locked_by_another_process(db, 1.0):
            with pytest.raises(StoreError, match="locked by another connection or process"):
                store.apply(commit)
            assert store.checkpoint(shape) == before
        store.apply(commit)  # the same commit, once the lock is gone
        assert converged(fake, db)
    assert integrity(db) == ["ok"]


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable: chmod for a normal user; root ignores modes, so chattr +i."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(stat.S_IRUSR)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("running as root without chattr +i: cannot make a file read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.integration
def test_a_read_only_database_is_a_clear_error_at_once(tmp_path: Path) -> None:
    db = tmp_path / "replica.db"
    fake = make_fake(5)
    with serve_in_thread(fake) as server:
        sync = [sys.executable, "-m", "replica", "sync", server.url, "--table", "items", "--db", str(db), "--once"]
        assert subprocess.run(sync, cwd=ROOT, capture_output=True, timeout=30).returncode == 0
        fake.insert("items", row(6))
        with read_only(db):
            started = time.monotonic()
            done = subprocess.run(sync, cwd=ROOT, capture_output=True, text=True, timeout=30)
            assert done.returncode == 1, done.stderr
            assert "read-only" in done.stderr and str(db) in done.stderr, done.stderr
            assert done.stderr.count("read-only") <= 2, "retried a read-only database: " + done.stderr
            assert time.monotonic() - started < 10
    assert integrity(db) == ["ok"]


@pytest.mark.integration
def test_a_second_syncer_on_the_same_database_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    db = tmp_path / "replica.db"
    fake = make_fake(5)
    with serve_in_thread(fake) as server:
        first = subprocess.Popen([sys.executable, "-m", "replica", "sync", server.url, "--table", "items",
                                  "--db", str(db)], cwd=ROOT)
        try:
            wait(lambda: db.exists() and converged(fake, db), what="the first syncer")
            second = subprocess.run([sys.executable, "-m", "replica", "sync", server.url, "--table", "items",
                                     "--db", str(db), "--once"], cwd=ROOT, capture_output=True, text=True, timeout=30)
            assert second.returncode == 1
            assert "another replica is already writing" in second.stderr, second.stderr
            assert "only one writer per database" in second.stderr
            fake.insert("items", row(7))
            wait(lambda: converged(fake, db), what="the first syncer to go on")  # it was not disturbed
        finally:
            first.terminate()
            first.wait(10)
    assert first.returncode == 0
    assert integrity(db) == ["ok"]
