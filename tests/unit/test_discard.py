"""discard_if_unused: a database that got no commit goes (with its companions); anything else stays."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from replica.protocol import Change, Checkpoint, Commit, Shape
from replica.protocol.wire import build_key
from replica.store import Store
from replica.store.discard import discard_if_unused, is_unused

SCHEMA = {"id": {"type": "int4", "pk_index": 0, "not_null": True}, "title": {"type": "text"}}
ITEMS = Shape("items")


def insert(id: int) -> Change:
    return Change("insert", build_key("public", "items", [str(id)]), {"id": str(id), "title": "t"},
                  {"operation": "insert"})


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


def test_a_fresh_database_and_its_companions_go(db: Path) -> None:
    Store(db).close()
    assert names(db.parent) == ["app.db", "app.db-replica-lock"]
    assert discard_if_unused(db) is True
    assert names(db.parent) == []


def test_a_recorded_error_is_not_a_commit(db: Path) -> None:
    with Store(db) as store:
        store.set_state("items", "error", "400 the server refused the shape definition")
        assert is_unused(store.connection)
    assert discard_if_unused(db) is True


@pytest.mark.parametrize("what", ["a staged position", "a published commit", "an app table", "an app view"])
def test_anything_committed_keeps_the_file(db: Path, what: str) -> None:
    with Store(db) as store:
        if what == "a staged position":
            store.apply(Commit(ITEMS, (insert(1),), Checkpoint("h", "0_0", None, SCHEMA, False), False, refetch=True))
        elif what == "a published commit":
            store.apply(Commit(ITEMS, (insert(1),), Checkpoint("h", "0_inf", None, SCHEMA, True), True, refetch=True))
        assert is_unused(store.connection) is (what.startswith("an app"))
    if what.startswith("an app"):
        conn = apsw.Connection(str(db))
        conn.execute("CREATE TABLE notes (body TEXT)" if what == "an app table" else "CREATE VIEW v AS SELECT 1")
        conn.close()
    assert discard_if_unused(db) is False
    assert db.exists()


def test_any_bookkeeping_row_a_commit_wrote_keeps_the_file(db: Path) -> None:
    Store(db).close()
    conn = apsw.Connection(str(db))
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' AND name <> "
                                              "'_replica_shapes'")]
    assert len(tables) >= 3 and is_unused(conn)
    for table in tables:  # whatever a later version keeps there: a row means something was committed
        columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
        with conn:
            conn.execute(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(columns))})', ["1"] * len(columns))
        assert not is_unused(conn), table
        with conn:
            conn.execute(f'DELETE FROM "{table}"')
    conn.close()
    assert discard_if_unused(db) is True


def test_a_position_reset_later_still_counts_as_synced_once(db: Path) -> None:
    with Store(db) as store:
        store.apply(Commit(ITEMS, (insert(1),), Checkpoint("h", "0_inf", None, SCHEMA, True), True, refetch=True))
        store.reset("items")
    assert discard_if_unused(db) is False


def test_a_database_another_writer_holds_stays(db: Path) -> None:
    with Store(db):
        assert discard_if_unused(db) is False
        assert db.exists()


def test_a_missing_file_creates_nothing(db: Path) -> None:
    assert discard_if_unused(db) is False
    assert names(db.parent) == []


@pytest.mark.parametrize("content", [b"not a database, but someone's file" * 100, b""])
def test_a_file_that_is_not_replicas_database(db: Path, content: bytes) -> None:
    db.write_bytes(content)
    # Only a file the caller's run created is ever offered; even so, text that is no database stays.
    assert discard_if_unused(db) is (content == b"")
    assert db.exists() is (content != b"")
