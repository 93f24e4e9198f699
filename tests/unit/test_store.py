"""Store: bootstrap, apply semantics, staging, refetch and schema change, checkpoints, status, faults."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import apsw
import pytest

from replica.errors import ProtocolError, ShapeError, StoreError
from replica.protocol import Change, Checkpoint, Commit, Shape
from replica.protocol.wire import build_key
from replica.store.store import STATE_SQL, Store

ITEMS = Shape("items")
SCHEMA: dict[str, Any] = {
    "id": {"type": "int4", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "n": {"type": "int8"},
}
STATE_FILE = Path(__file__).resolve().parents[2] / "schemas" / "state.sql"


def change(op: str, id: int | str, **cols: str | None) -> Change:
    return Change(op, build_key("public", "items", [str(id)]), {"id": str(id), **cols}, {"operation": op})


def commit(
    changes: list[Change] | tuple[Change, ...] = (),
    offset: str = "0_inf",
    *,
    up_to_date: bool = True,
    refetch: bool = False,
    handle: str | None = "h1",
    schema: Mapping[str, Any] | None = None,
    shape: Shape = ITEMS,
    cursor: str | None = None,
) -> Commit:
    checkpoint = Checkpoint(handle, offset, cursor, SCHEMA if schema is None else schema, up_to_date)
    return Commit(shape, tuple(changes), checkpoint, up_to_date, refetch)


def connect(path: Path) -> apsw.Connection:
    """Another connection, as an app would open one.

    In this process it must be apsw: a second SQLite library (stdlib sqlite3) in the same process
    does not see apsw's POSIX locks, and closing its last connection deletes the WAL under the
    store (SQLite's "multiple copies of SQLite in one process" hazard). Other processes may use
    any SQLite; ``test_another_process_reads_with_stdlib_sqlite3`` shows that.
    """
    return apsw.Connection(str(path))


def rows(path: Path, table: str = "items", order: str = "1") -> list[tuple[Any, ...]]:
    with closing(connect(path)) as db:
        if not db.table_exists(None, table):
            return []
        return db.execute(f'SELECT * FROM "{table}" ORDER BY {order}').fetchall()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


def seed(store: Store) -> None:
    store.apply(
        commit(
            [change("insert", 1, title="one", n="10"), change("insert", 2, title="two", n="20")],
            "0_inf",
            refetch=True,
        )
    )


# --- the file ---


def test_file_is_private_wal_and_synchronous_normal(store: Store, db_path: Path) -> None:
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    seed(store)
    for suffix in ("-wal", "-shm"):
        sidecar = Path(str(db_path) + suffix)
        if sidecar.exists():
            assert stat.S_IMODE(os.stat(sidecar).st_mode) & 0o077 == 0
    assert store.connection.pragma("journal_mode") == "wal"
    assert store.connection.pragma("synchronous") == 1  # NORMAL


def test_state_sql_constant_equals_schemas_file() -> None:
    assert STATE_SQL == STATE_FILE.read_text()


def test_store_creates_exactly_the_bookkeeping_ddl(store: Store, db_path: Path) -> None:
    def objects(db: Any) -> list[tuple[str, str, str]]:
        return [tuple(r) for r in db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()]

    with closing(connect(db_path)) as created, closing(sqlite3.connect(":memory:")) as expected:
        expected.executescript(STATE_FILE.read_text())
        assert objects(created) == objects(expected)
        # Every object is replica's (SQLite's automatic PK indexes are named after their table).
        assert all(name.removeprefix("sqlite_autoindex_").startswith("_replica") for _t, name, _s in objects(created))


def test_reopening_keeps_state_and_rows(store: Store, db_path: Path) -> None:
    seed(store)
    store.close()
    store.close()  # idempotent
    with Store(db_path) as again:
        assert again.checkpoint(ITEMS) == Checkpoint("h1", "0_inf", None, SCHEMA, True)
    assert rows(db_path) == [(1, "one", 10), (2, "two", 20)]


def test_single_writer_lock(store: Store, db_path: Path) -> None:
    with pytest.raises(StoreError, match="another replica is already writing"):
        Store(db_path)
    store.close()
    with Store(db_path):
        pass


def test_operations_on_a_closed_store_raise_store_error(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.status()


# --- apply semantics ---


def test_insert_partial_update_delete(store: Store, db_path: Path) -> None:
    seed(store)
    applied = store.apply(
        commit(
            [
                change("update", 1, title="uno"),  # replica=default: PK + changed columns
                change("insert", 3, title="three", n=None),
                change("delete", 2),
                change("delete", 99),  # a missing row: no-op
                change("update", 98, title="ghost"),  # partial update of a missing row: no-op
            ],
            "5_0",
        )
    )
    assert rows(db_path) == [(1, "uno", 10), (3, "three", None)]
    assert (applied.inserted, applied.updated, applied.deleted) == (1, 2, 2)
    assert applied.keys["insert"] == (build_key("public", "items", ["3"]),)
    assert applied.keys["delete"] == (build_key("public", "items", ["2"]), build_key("public", "items", ["99"]))
    assert applied.rows == 2 and applied.published and not applied.refetch


def test_insert_is_an_upsert_and_full_update_of_missing_row_upserts(store: Store, db_path: Path) -> None:
    seed(store)
    store.apply(
        commit(
            [
                change("insert", 1, title="again", n="11"),  # redelivered insert
                change("update", 7, title="seven", n="70"),  # replica=full: whole row, row missing
            ],
            "6_0",
        )
    )
    assert rows(db_path) == [(1, "again", 11), (2, "two", 20), (7, "seven", 70)]


def test_pk_change_arrives_as_delete_plus_insert(store: Store, db_path: Path) -> None:
    seed(store)
    store.apply(commit([change("delete", 1), change("insert", 5, title="one", n="10")], "7_0"))
    assert rows(db_path) == [(2, "two", 20), (5, "one", 10)]


@pytest.mark.guarantee("R3")
def test_applying_the_same_commit_twice_equals_once(store: Store, db_path: Path) -> None:
    seed(store)
    batch = commit([change("update", 1, title="x"), change("delete", 2), change("insert", 3, title="t")], "8_0")
    first = store.apply(batch)
    after_once = rows(db_path)
    store.apply(batch)
    assert rows(db_path) == after_once
    assert store.checkpoint(ITEMS) == Checkpoint("h1", "8_0", None, SCHEMA, True)
    # An older commit of the same handle (a stale redelivery) is skipped, not replayed.
    stale = store.apply(commit([change("insert", 1, title="old")], "2_0"))
    assert not stale.published and rows(db_path) == after_once
    assert first.published


def test_table_without_primary_key(store: Store, db_path: Path) -> None:
    shape = Shape("pairs")
    schema = {"a": {"type": "int4"}, "b": {"type": "text"}}

    def pair(op: str, a: str | None, b: str | None) -> Change:
        return Change(op, build_key("public", "pairs", [a, b]), {"a": a, "b": b}, {"operation": op})

    store.apply(
        commit(
            [
                pair("insert", "1", None),
                pair("insert", "1", None),
                pair("insert", "2", "x"),
                pair("insert", None, None),
            ],
            schema=schema,
            shape=shape,
            refetch=True,
        )
    )
    assert rows(db_path, "pairs", "a, b") == [(None, None), (1, None), (2, "x")]
    store.apply(
        commit(
            [pair("delete", "1", None), pair("delete", "2", "y"), pair("update", "3", None)],
            "1_0",
            schema=schema,
            shape=shape,
        )
    )
    assert rows(db_path, "pairs", "a, b") == [(None, None), (2, "x"), (3, None)]
    with pytest.raises(ProtocolError, match="every column"):
        store.apply(commit([Change("delete", "k", {"a": "2"}, {})], "2_0", schema=schema, shape=shape))


def test_values_are_converted_with_the_type_map(store: Store, db_path: Path) -> None:
    shape = Shape("typed")
    schema = {
        "id": {"type": "int8", "pk_index": 0},
        "f": {"type": "float8"},
        "ok": {"type": "bool"},
        "raw": {"type": "bytea"},
        "tags": {"type": "text", "dims": 1},
        "at": {"type": "timestamptz"},
    }
    value = {
        "id": "9223372036854775807",
        "f": "NaN",
        "ok": "t",
        "raw": "\\x00ff",
        "tags": "{a,NULL}",
        "at": "2024-01-02 03:04:05+00",
    }
    store.apply(commit([Change("insert", "k", value, {})], schema=schema, shape=shape, refetch=True))
    assert rows(db_path, "typed") == [(2**63 - 1, "NaN", 1, b"\x00\xff", '["a",null]', "2024-01-02 03:04:05+00:00")]


def test_a_bad_value_is_refused_before_anything_is_staged(store: Store, db_path: Path) -> None:
    seed(store)
    with pytest.raises(ProtocolError, match="'n'"):
        store.apply(commit([change("insert", 3, title="t", n="NaN")], "9_0", up_to_date=False))
    assert store.checkpoint(ITEMS) == Checkpoint("h1", "0_inf", None, SCHEMA, True)
    assert store.status("items")[0].staged == 0


# --- staging (R2, R4, R10) ---


@pytest.mark.guarantee("R2")
def test_staged_changes_are_invisible_until_published(store: Store, db_path: Path) -> None:
    seed(store)
    a = store.apply(commit([change("insert", 1, title="new one")], "0_0", up_to_date=False, refetch=True, handle="h2"))
    assert not a.published and a.staged == 1 and a.rows == 2
    with closing(connect(db_path)) as reader:  # an app holding a connection open
        store.apply(commit([change("insert", 3, title="three")], "0_1", up_to_date=False, handle="h2"))
        assert reader.execute("SELECT * FROM items ORDER BY id").fetchall() == [(1, "one", 10), (2, "two", 20)]
        assert store.checkpoint(ITEMS) == Checkpoint("h2", "0_1", None, SCHEMA, False)
        assert store.status("items")[0].staged == 2
        published = store.apply(commit([change("update", 3, n="3")], "0_inf", handle="h2"))
        assert reader.execute("SELECT * FROM items ORDER BY id").fetchall() == [(1, "new one", None), (3, "three", 3)]
    assert published.refetch and published.published and published.keys == {}
    assert (published.inserted, published.updated, published.rows) == (2, 0, 2)  # a snapshot: inserted = its rows
    assert store.checkpoint(ITEMS) == Checkpoint("h2", "0_inf", None, SCHEMA, True)
    assert store.status("items")[0].staged == 0


def test_a_live_burst_staged_across_responses_keeps_keys(store: Store, db_path: Path) -> None:
    seed(store)
    store.apply(commit([change("insert", 3, title="a")], "10_0", up_to_date=False))
    store.apply(commit([change("delete", 1)], "11_0", up_to_date=False))
    applied = store.apply(commit([], "11_0", cursor="c9"))
    assert not applied.refetch
    assert applied.keys["insert"] == (build_key("public", "items", ["3"]),)
    assert applied.keys["delete"] == (build_key("public", "items", ["1"]),)
    assert rows(db_path) == [(2, "two", 20), (3, "a", None)]
    assert store.checkpoint(ITEMS) == Checkpoint("h1", "11_0", "c9", SCHEMA, True)


def test_a_new_snapshot_discards_the_unfinished_one(store: Store, db_path: Path) -> None:
    store.apply(commit([change("insert", 1, title="old handle")], "0_0", up_to_date=False, refetch=True, handle="h1"))
    # 409 mid-snapshot: the protocol restarts with refetch=True under a new handle.
    store.apply(commit([change("insert", 2, title="new")], "0_0", up_to_date=False, refetch=True, handle="h2"))
    store.apply(commit([], "0_inf", handle="h2"))
    assert rows(db_path) == [(2, "new", None)]


@pytest.mark.guarantee("R10")
def test_publishing_a_large_staged_snapshot_keeps_memory_bounded(store: Store, db_path: Path) -> None:
    per_commit, commits = 2000, 15
    for i in range(commits):
        batch = [change("insert", i * per_commit + j, title="x" * 40, n=str(j)) for j in range(per_commit)]
        store.apply(commit(batch, f"0_{i}", up_to_date=False, refetch=i == 0))
        del batch
    tracemalloc.start()
    try:
        applied = store.apply(commit([], "0_inf"))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert applied.rows == per_commit * commits and applied.keys == {}
    # The 30,000 rows as Python objects would take well over 10 MB; batches stay far below.
    assert peak < 3_000_000, peak


# --- refetch, schema change, user objects ---


def add_user_objects(db_path: Path) -> None:
    with closing(connect(db_path)) as db:
        db.execute("CREATE TABLE audit (id INTEGER, title TEXT)")
        db.execute("CREATE INDEX items_title ON items (title)")
        db.execute("CREATE INDEX items_n ON items (n)")
        db.execute(
            "CREATE TRIGGER items_audit AFTER INSERT ON items BEGIN INSERT INTO audit VALUES (new.id, new.title); END"
        )
        db.execute(
            "CREATE TRIGGER items_n_audit AFTER UPDATE ON items BEGIN INSERT INTO audit VALUES (new.n, 'n'); END"
        )
        db.execute("CREATE VIEW titles AS SELECT title FROM items")


def user_objects(db_path: Path) -> list[str]:
    with closing(connect(db_path)) as db:
        return [
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE tbl_name = 'items' AND name NOT LIKE 'sqlite%' ORDER BY name"
            )
        ]


@pytest.mark.guarantee("R2")
def test_refetch_with_same_schema_replaces_rows_and_keeps_indexes_and_triggers(store: Store, db_path: Path) -> None:
    seed(store)
    add_user_objects(db_path)
    store.apply(commit([change("insert", 3, title="fresh")], "0_0", refetch=True, handle="h2"))
    assert rows(db_path) == [(3, "fresh", None)]
    assert user_objects(db_path) == ["items", "items_audit", "items_n", "items_n_audit", "items_title"]
    assert rows(db_path, "audit", "rowid")[-1] == (3, "fresh")


def test_schema_change_rebuilds_table_and_recreates_what_still_applies(store: Store, db_path: Path) -> None:
    seed(store)
    add_user_objects(db_path)
    new_schema = {"id": {"type": "int8", "pk_index": 0}, "title": {"type": "text"}, "extra": {"type": "bool"}}
    applied = store.apply(
        commit([change("insert", 4, title="four", extra="true")], "0_0", refetch=True, handle="h3", schema=new_schema)
    )
    with closing(connect(db_path)) as db:
        assert [r[1] for r in db.execute("PRAGMA table_info(items)")] == ["id", "title", "extra"]
        assert db.execute("SELECT * FROM titles").fetchall() == [("four",)]  # the view still works
    assert rows(db_path) == [(4, "four", 1)]
    assert user_objects(db_path) == ["items", "items_audit", "items_title"]
    assert set(applied.dropped) == {"items_n", "items_n_audit"}
    assert rows(db_path, "audit", "rowid")[-1] == (4, "four")
    store.apply(commit([change("update", 4, title="FOUR")], "1_0", handle="h3", schema=new_schema))
    assert rows(db_path) == [(4, "FOUR", 1)]


def test_empty_shape_still_creates_its_table(store: Store, db_path: Path) -> None:
    applied = store.apply(commit([], "0_inf", refetch=True))
    assert applied.published and applied.rows == 0
    with closing(connect(db_path)) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_hostile_local_table_name(store: Store, db_path: Path) -> None:
    name = 'we"ird; DROP TABLE items; --'
    shape = Shape("items", name=name)
    store.apply(commit([change("insert", 1, title="x")], shape=shape, refetch=True))
    with closing(connect(db_path)) as db:
        assert db.execute('SELECT * FROM "we""ird; DROP TABLE items; --"').fetchall() == [(1, "x", None)]
    assert store.status(name)[0].rows == 1


def test_a_handle_change_without_refetch_still_replaces_rows(store: Store, db_path: Path) -> None:
    seed(store)
    applied = store.apply(commit([change("insert", 9, title="nine")], "0_inf", handle="other"))
    assert applied.refetch and rows(db_path) == [(9, "nine", None)]


# --- checkpoints, definitions, reset, status ---


def test_checkpoint_round_trip_and_nothing_stored(store: Store) -> None:
    assert store.checkpoint(ITEMS) is None
    store.apply(commit([], "0_inf", refetch=True, cursor="123"))
    assert store.checkpoint(ITEMS) == Checkpoint("h1", "0_inf", "123", SCHEMA, True)


@pytest.mark.guarantee("R8")
def test_checkpoint_is_bound_to_the_shape_definition(store: Store, db_path: Path) -> None:
    seed(store)
    store.close()
    narrowed = Shape("items", where="id > 1")
    with Store(db_path) as again:
        assert again.checkpoint(narrowed) is None
        again.apply(
            commit(
                [change("insert", 5, title="five")], "0_0", up_to_date=False, refetch=True, shape=narrowed, handle="h9"
            )
        )
        assert rows(db_path) == [(1, "one", 10), (2, "two", 20)]  # old rows visible meanwhile
        again.apply(commit([], "0_inf", shape=narrowed, handle="h9"))
        assert rows(db_path) == [(5, "five", None)]
        assert again.checkpoint(narrowed) == Checkpoint("h9", "0_inf", None, SCHEMA, True)
    with Store(db_path) as third:
        assert third.checkpoint(ITEMS) is None


def test_two_shapes_may_not_target_one_table(store: Store) -> None:
    store.checkpoint(ITEMS)
    with pytest.raises(ShapeError, match=r"\(items\) and \(other where x\) both target the local table 'ITEMS'"):
        store.checkpoint(Shape("other", where="x", name="ITEMS"))


def test_an_unmanaged_table_is_not_overwritten(store: Store, db_path: Path) -> None:
    with closing(connect(db_path)) as db:
        db.execute("CREATE TABLE items (mine TEXT)")
    with pytest.raises(ShapeError, match="not created by replica"):
        store.apply(commit([change("insert", 1)], refetch=True))


def test_many_shapes_in_one_file(store: Store, db_path: Path) -> None:
    other = Shape("items", name="items_copy")
    store.apply(commit([change("insert", 1, title="a")], refetch=True))
    store.apply(commit([change("insert", 2, title="b")], refetch=True, shape=other))
    assert rows(db_path) == [(1, "a", None)]
    assert rows(db_path, "items_copy") == [(2, "b", None)]
    assert [s.name for s in store.status()] == ["items", "items_copy"]


def test_status_and_set_state(store: Store) -> None:
    store.set_state("items", "connecting")
    [status] = store.status()
    assert (status.name, status.state, status.rows, status.handle, status.last_synced_at) == (
        "items",
        "connecting",
        0,
        None,
        None,
    )
    seed(store)
    store.set_state("items", "error", "boom")
    [status] = store.status("items")
    assert (status.state, status.error, status.rows, status.offset) == ("error", "boom", 2, "0_inf")
    assert status.last_synced_at is not None and abs(status.last_synced_at - time.time()) < 60
    store.set_state("items", "live")
    assert store.status("items")[0].error is None
    assert store.status("nope") == []
    with pytest.raises(ValueError):
        store.set_state("items", "dancing")


def test_reset_resyncs_and_keeps_rows_until_the_new_snapshot(store: Store, db_path: Path) -> None:
    seed(store)
    store.apply(commit([change("insert", 3, title="staged")], "1_0", up_to_date=False))
    assert store.reset("items") is True
    assert store.checkpoint(ITEMS) is None
    assert rows(db_path) == [(1, "one", 10), (2, "two", 20)]
    # The protocol restarts from -1 (its first commit says refetch) and may get the same handle back.
    store.apply(commit([change("insert", 2, title="two")], "0_0", up_to_date=False, refetch=True))
    applied = store.apply(commit([], "0_inf"))
    assert applied.refetch and rows(db_path) == [(2, "two", None)]
    assert store.reset("unknown") is False


def test_a_dropped_table_is_synced_again(store: Store, db_path: Path) -> None:
    seed(store)
    store.apply(commit([change("insert", 3)], "9_0", up_to_date=False))  # a live burst extending the rows
    with closing(connect(db_path)) as db:
        db.execute("DROP TABLE items")
    assert store.checkpoint(ITEMS) is None
    with pytest.raises(StoreError, match="disappeared"):
        store.apply(commit([change("insert", 4)], "10_0"))
    store.apply(commit([change("insert", 5)], "0_0", refetch=True, handle="h2"))
    assert rows(db_path) == [(5, None, None)]


def test_reserved_or_taken_local_names_are_refused(store: Store, db_path: Path) -> None:
    with pytest.raises(ShapeError, match="reserved"):
        store.apply(commit([change("insert", 1)], up_to_date=False, shape=Shape("items", name="_replica_items")))
    with closing(connect(db_path)) as db:
        db.execute("CREATE VIEW v AS SELECT 1")
    with pytest.raises(ShapeError, match="a view"):
        store.apply(commit([change("insert", 1)], shape=Shape("items", name="v"), refetch=True))


def test_a_missing_directory_names_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="directory"):
        Store(tmp_path / "missing" / "app.db")


# --- faults (R1) ---


def abort_when(store: Store, needle: str) -> None:
    def trace(_cursor: apsw.Cursor, sql: str, _bindings: Any) -> bool:
        return needle not in sql

    store.connection.exec_trace = trace


@pytest.mark.guarantee("R1")
@pytest.mark.parametrize(
    "needle",
    [
        'INSERT INTO main."items"',
        'DELETE FROM main."items"',
        'INSERT INTO "_replica_shapes"',
        'DELETE FROM "_replica_staging"',
    ],
)
def test_a_fault_mid_publish_leaves_rows_and_checkpoint_unchanged(store: Store, db_path: Path, needle: str) -> None:
    seed(store)
    store.apply(commit([change("insert", 3, title="staged")], "0_0", up_to_date=False, refetch=True, handle="h2"))
    before_rows, before_status = rows(db_path), store.status()
    before_checkpoint = store.checkpoint(ITEMS)
    abort_when(store, needle)
    with pytest.raises(StoreError, match="exec tracer") as info:
        store.apply(commit([change("delete", 1), change("insert", 4, title="four")], "0_inf", handle="h2"))
    assert isinstance(info.value.__cause__, apsw.ExecTraceAbort)
    store.connection.exec_trace = None
    assert rows(db_path) == before_rows
    assert store.status() == before_status
    assert store.checkpoint(ITEMS) == before_checkpoint
    # And the store is usable afterwards: the retry publishes everything.
    store.apply(commit([change("delete", 1), change("insert", 4, title="four")], "0_inf", handle="h2"))
    assert rows(db_path) == [(3, "staged", None), (4, "four", None)]


@pytest.mark.guarantee("R1")
def test_a_fault_while_staging_leaves_the_stage_unchanged(store: Store) -> None:
    store.set_state("items", "syncing")
    store.apply(commit([change("insert", 1)], "0_0", up_to_date=False, refetch=True))
    abort_when(store, '"_replica_stages"')
    with pytest.raises(StoreError):
        store.apply(commit([change("insert", 2)], "0_1", up_to_date=False))
    store.connection.exec_trace = None
    assert store.checkpoint(ITEMS) == Checkpoint("h1", "0_0", None, SCHEMA, False)
    assert store.status("items")[0].staged == 1


@pytest.mark.guarantee("R2")
def test_readers_see_the_old_rows_during_a_publish(store: Store, db_path: Path) -> None:
    seed(store)
    seen: list[list[tuple[Any, ...]]] = []

    def trace(_cursor: apsw.Cursor, sql: str, _bindings: Any) -> bool:
        if sql.startswith('INSERT INTO "_replica_shapes"'):  # the last write before COMMIT
            seen.append(rows(db_path))
        return True

    store.connection.exec_trace = trace
    store.apply(commit([change("insert", 3, title="new")], "0_0", refetch=True, handle="h2"))
    store.connection.exec_trace = None
    assert seen == [[(1, "one", 10), (2, "two", 20)]]
    assert rows(db_path) == [(3, "new", None)]


def test_a_locked_database_names_the_remedy(db_path: Path) -> None:
    with Store(db_path, busy_timeout=0.05) as store:
        seed(store)
        with closing(connect(db_path)) as app:
            app.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="locked by another connection") as info:
                store.apply(commit([change("insert", 3)], "9_0"))
            assert isinstance(info.value.__cause__, apsw.BusyError)
            app.execute("ROLLBACK")
        store.apply(commit([change("insert", 3)], "9_0"))
        assert len(rows(db_path)) == 3


def test_the_app_can_write_its_own_tables_between_applies(store: Store, db_path: Path) -> None:
    seed(store)
    with closing(connect(db_path)) as app:
        app.execute("CREATE TABLE notes (t TEXT)")
        app.execute("INSERT INTO notes VALUES ('mine')")
        store.apply(commit([change("insert", 3)], "9_0"))
        app.execute("INSERT INTO notes VALUES ('again')")
    assert rows(db_path, "notes", "rowid") == [("mine",), ("again",)]


READ_WITH_STDLIB = """
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(json.dumps(db.execute("SELECT id, title FROM items ORDER BY id").fetchall()))
"""


@pytest.mark.guarantee("R2")
def test_another_process_reads_with_stdlib_sqlite3(store: Store, db_path: Path) -> None:
    def read() -> list[list[Any]]:
        out = subprocess.run(
            [sys.executable, "-c", READ_WITH_STDLIB, str(db_path)], capture_output=True, text=True, check=True
        ).stdout
        return json.loads(out)

    seed(store)
    store.apply(commit([change("insert", 3, title="staged")], "0_0", up_to_date=False, refetch=True, handle="h2"))
    assert read() == [[1, "one"], [2, "two"]]
    store.apply(commit([], "0_inf", handle="h2"))
    assert read() == [[3, "staged"]]
