"""An app reads the synced database in the process that syncs it, with the SQLite library it already
uses — stdlib sqlite3, SQLAlchemy, pandas — at any rate, through the initial sync, a 409 refetch and live
changes: no vanished WAL, no retry caused by a reader, no partial state (R2), nothing but the source's rows."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas
import pytest
import sqlalchemy
from oracle import expected, local, pk_of

from replica import Backoff, Replica, Shape
from replica.testing import FakeElectric, serve_in_thread

pytestmark = pytest.mark.integration
COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "n": {"type": "int8"}}
ROWS, EACH = 2000, 100  # every transfer moves value between two rows: sum(n) is always ROWS * EACH
Read = Callable[[Path], tuple[int, int]]


def read_sqlite3(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(db, timeout=1.0)
    try:
        return conn.execute("SELECT count(*), sum(n) FROM todos").fetchone()
    finally:
        conn.close()


def read_sqlite3_read_only(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    try:
        return conn.execute("SELECT count(*), sum(n) FROM todos").fetchone()
    finally:
        conn.close()


def read_sqlalchemy(db: Path) -> tuple[int, int]:
    engine = sqlalchemy.create_engine(f"sqlite:///{db}", connect_args={"timeout": 1.0})
    try:
        with engine.connect() as conn:
            row = conn.execute(sqlalchemy.text("SELECT count(*), sum(n) FROM todos")).one()
            return int(row[0]), int(row[1] or 0)
    finally:
        engine.dispose()


def read_sqlalchemy_read_only(db: Path) -> tuple[int, int]:
    engine = sqlalchemy.create_engine(f"sqlite:///file:{db}?mode=ro&uri=true", connect_args={"timeout": 1.0})
    try:
        with engine.connect() as conn:
            row = conn.execute(sqlalchemy.text("SELECT count(*), sum(n) FROM todos")).one()
            return int(row[0]), int(row[1] or 0)
    finally:
        engine.dispose()


def read_pandas(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(db, timeout=1.0)
    try:
        frame = pandas.read_sql_query("SELECT id, n FROM todos", conn)
        return len(frame), int(frame["n"].sum())
    finally:
        conn.close()


READERS: dict[str, Read] = {
    "sqlite3": read_sqlite3, "sqlite3 read-only URI": read_sqlite3_read_only, "SQLAlchemy": read_sqlalchemy,
    "SQLAlchemy read-only URI": read_sqlalchemy_read_only, "pandas": read_pandas,
}


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


def transfers(fake: FakeElectric, stop: threading.Event) -> None:
    """Move value between two rows in single transactions until told to stop; one 409 refetch on the way."""
    values = {int(row["id"] or 0): int(row["n"] or 0) for row in fake.rows("todos").values()}
    i = 0
    while not stop.is_set():
        i += 1
        a, b = 1 + (i * 7) % ROWS, 1 + (i * 13 + 5) % ROWS
        if a != b:
            values[a], values[b] = values[a] - 3, values[b] + 3
            with fake.transaction() as tx:
                tx.update("todos", {"id": str(a), "n": str(values[a])})
                tx.update("todos", {"id": str(b), "n": str(values[b])})
        if i == 60:
            fake.rotate("todos")  # 409 must-refetch: the old rows stay until the new snapshot commits
        time.sleep(0.003)


@pytest.mark.guarantee("R2")
@pytest.mark.parametrize("reader", list(READERS))
def test_an_app_reads_with_its_own_sqlite_library_while_replica_syncs(
    tmp_path: Path, reader: str, caplog: pytest.LogCaptureFixture
) -> None:
    read = READERS[reader]
    fake = FakeElectric(long_poll_timeout=1.0, chunk_bytes=8_000)  # the snapshot spans many responses
    # Values go back to EACH each pair, so every committed state sums to ROWS * EACH.
    fake.create_table("todos", COLUMNS, rows=[{"id": str(i), "n": str(EACH)} for i in range(1, ROWS + 1)])
    db = tmp_path / "app.db"
    caplog.set_level(logging.WARNING)
    reads = 0
    errors: list[str] = []
    partial: list[tuple[int, int]] = []
    stop = threading.Event()
    with serve_in_thread(fake) as server, Replica(db, server.url, Shape("todos")) as replica:
        assert replica.process == "child"
        writer = threading.Thread(target=transfers, args=(fake, stop))
        deadline = time.monotonic() + 60
        synced = False
        while time.monotonic() < deadline:
            try:
                count, total = read(db)
            except (sqlite3.OperationalError, sqlalchemy.exc.OperationalError, pandas.errors.DatabaseError) as exc:
                if synced:  # before the first commit the file or the table may not be there yet
                    errors.append(str(exc))
                continue
            reads += 1
            if (count, total) != (ROWS, ROWS * EACH):
                partial.append((count, total))
            if not synced:
                synced = True
                writer.start()  # live changes (and the refetch) while the reads go on
            if reads >= 300 and not writer.is_alive() or reads >= 300 and stop.is_set():
                break
            if reads == 250:
                stop.set()
        stop.set()
        writer.join()
        wait_converged = time.monotonic() + 30
        while local(db, "todos", pk_of(fake, "todos")) != expected(fake, "todos"):
            assert time.monotonic() < wait_converged, "replica did not converge"
            time.sleep(0.05)
        status = replica.status()[0]
    assert reads >= 300 and errors == [], (reads, errors[:5])
    assert partial == [], f"readers saw states Postgres never had: {partial[:5]}"
    warnings = [r for r in caplog.records if r.name.startswith("replica") and r.levelno >= logging.WARNING]
    assert warnings == [], [r.getMessage() for r in warnings]  # no vanished WAL, no retry a reader caused
    assert status.error is None and status.rows == ROWS
