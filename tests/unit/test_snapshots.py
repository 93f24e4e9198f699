"""A snapshot is staged in its table's own layout, changed in place, and swapped in at publish (R1, R2, R3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_store import ITEMS, SCHEMA, change, commit, rows

from replica.errors import ProtocolError, StoreError
from replica.protocol import Shape
from replica.store import snapshots
from replica.store.store import Store
from replica.typemap.schema import create_table_sql

SNAPSHOT = "_replica_new_items"


def tables(store: Store) -> list[str]:
    return [r[0] for r in store.connection.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_replica\\_%' ESCAPE '\\' "
        "OR name = ? ORDER BY name", (SNAPSHOT,))]


@pytest.mark.guarantee("R2")
@pytest.mark.parametrize("copy_below", [0, 1000], ids=["renamed", "copied"])
def test_a_first_snapshot_is_staged_invisibly_and_renamed_into_place(
    tmp_path: Path, copy_below: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshots, "COPY_BELOW", copy_below)  # a small snapshot is copied, a larger one renamed
    with Store(tmp_path / "a.db") as store:
        store.apply(commit([], "0_0", up_to_date=False, refetch=True))  # a first response without rows
        store.apply(commit([change("insert", i, title=f"t{i}", n=str(i)) for i in range(1, 6)], "0_1",
                           up_to_date=False))
        assert tables(store) == [SNAPSHOT] and rows(tmp_path / "a.db") == []  # readers see no table yet
        store.apply(commit([change("insert", 3, title="again", n="33"), change("delete", 5)], "0_2",
                           up_to_date=False))
        applied = store.apply(commit([change("update", 1, n="10"), change("insert", 6, title="t6", n="6")], "0_inf"))
        assert tables(store) == ["items"]
        assert rows(tmp_path / "a.db") == [(1, "t1", 10), (2, "t2", 2), (3, "again", 33), (4, "t4", 4),
                                           (6, "t6", 6)]  # every change applied in log order
        assert (applied.inserted, applied.rows, applied.refetch, applied.keys) == (5, 5, True, {})
        status = store.status("items")[0]
        assert (status.offset, status.rows, status.staged) == ("0_inf", 5, 0)
        # either way the table is the one a rename gives: the staged layout under its own name
        schema = store.connection.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE tbl_name = 'items' ORDER BY name").fetchall()
    assert schema == [("table", "items", "items", create_table_sql("items", SCHEMA))]


@pytest.mark.guarantee("R2")
def test_a_refetch_of_an_existing_table_replaces_its_rows_and_keeps_its_indexes_and_triggers(tmp_path: Path) -> None:
    with Store(tmp_path / "e.db") as store:
        store.apply(commit([change("insert", 1, title="a", n="1")], "0_inf", refetch=True))
        conn = store.connection
        conn.execute("CREATE INDEX items_by_title ON items (title)")
        conn.execute("CREATE TABLE audit (what TEXT, id INTEGER)")
        conn.execute("CREATE TRIGGER items_ins AFTER INSERT ON items BEGIN INSERT INTO audit VALUES ('+', new.id); END")
        conn.execute("CREATE TRIGGER items_del AFTER DELETE ON items BEGIN INSERT INTO audit VALUES ('-', old.id); END")
        store.apply(commit([change("insert", 2, title="b", n="2")], "0_0", up_to_date=False, refetch=True,
                           handle="h2"))
        assert tables(store) == [SNAPSHOT, "audit", "items"]
        assert rows(tmp_path / "e.db") == [(1, "a", 1)]  # the old rows stay visible until the publish
        store.apply(commit([change("update", 2, title="B")], "0_1", up_to_date=False, handle="h2"))
        applied = store.apply(commit([], "0_inf", handle="h2"))
        assert rows(tmp_path / "e.db") == [(2, "B", 2)] and tables(store) == ["audit", "items"]
        assert (applied.inserted, applied.rows, applied.refetch) == (1, 1, True)
        assert conn.execute("SELECT * FROM audit ORDER BY rowid").fetchall() == [("-", 1), ("+", 2)]
        assert conn.execute("SELECT name FROM sqlite_schema WHERE name = 'items_by_title'").fetchall()


@pytest.mark.guarantee("R3")
@pytest.mark.parametrize("first", [True, False], ids=["first snapshot", "refetch of an existing table"])
def test_a_bad_value_leaves_the_stage_as_it_was(tmp_path: Path, first: bool) -> None:
    with Store(tmp_path / "b.db") as store:
        if not first:
            store.apply(commit([change("insert", 100, title="old", n="100")], "0_inf", refetch=True, handle="h0"))
        store.apply(commit([change("insert", 1, title="a", n="1")], "0_0", up_to_date=False, refetch=True))
        with pytest.raises(ProtocolError, match="'n'"):
            store.apply(commit([change("insert", 2, title="b", n="two")], "0_1", up_to_date=False))
        with pytest.raises(ProtocolError, match="primary-key"):
            store.apply(commit([change("insert", 2, title="b", n="2")._replace(
                value={"id": None, "title": "b", "n": "2"})], "0_1", up_to_date=False))
        checkpoint = store.checkpoint(ITEMS)
        assert checkpoint is not None and (checkpoint.offset, checkpoint.up_to_date) == ("0_0", False)
        assert store.connection.execute(f'SELECT * FROM "{SNAPSHOT}"').fetchall() == [(1, "a", 1)]


@pytest.mark.guarantee("R3")
def test_a_snapshot_staged_with_other_column_types_is_fetched_again(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with Store(path) as store:
        store.apply(commit([change("insert", 1, title="a", n="1")], "0_0", up_to_date=False, refetch=True))
    typed = Shape("items", types={"n": "text"})
    with Store(path) as store:
        assert store.checkpoint(typed) is None  # resume from scratch: the staged values have other types
        with pytest.raises(StoreError, match="fetched again"):
            store.apply(commit([], "0_inf", shape=typed))
        store.apply(commit([change("insert", 1, title="a", n="1")], "0_0", up_to_date=False, refetch=True,
                           shape=typed))
        store.apply(commit([], "0_inf", shape=typed))
        assert rows(path) == [(1, "a", "1")]


def test_a_view_made_before_the_first_sync_still_gets_its_table(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        store.connection.execute("CREATE VIEW open_items AS SELECT id, title FROM items WHERE n > 1")
        store.apply(commit([change("insert", i, title=f"t{i}", n=str(i)) for i in range(1, 4)], "0_0",
                           up_to_date=False, refetch=True))
        store.apply(commit([], "0_inf"))  # SQLite refuses the rename while the view names a missing table
        assert store.connection.execute("SELECT * FROM open_items ORDER BY id").fetchall() == [(2, "t2"), (3, "t3")]
        assert tables(store) == ["items"]


def test_a_keyless_snapshot_finds_rows_by_every_column_and_keeps_one_identity_index(tmp_path: Path) -> None:
    keyless = {"a": {"type": "int4"}, "b": {"type": "text"}}
    shape = Shape("pairs")

    def pair(op: str, a: str, b: str | None) -> object:
        return change(op, 0)._replace(key=f'"public"."pairs"/"{a}"/"{b}"', value={"a": a, "b": b})

    with Store(tmp_path / "f.db") as store:
        store.apply(commit([pair("insert", "1", "x"), pair("insert", "1", "x"), pair("insert", "2", None)], "0_0",
                           up_to_date=False, refetch=True, schema=keyless, shape=shape))
        store.apply(commit([pair("delete", "2", None)], "0_inf", schema=keyless, shape=shape))
        assert rows(tmp_path / "f.db", "pairs") == [(1, "x")]  # one row per identity, as Electric's key map
        indexes = [r[0] for r in store.connection.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'pairs'")]
        assert indexes == ["_replica_identity_pairs"]


def test_a_stage_an_older_replica_kept_typed_is_dropped_and_the_shape_resumes_published(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Store(path) as store:
        store.apply(commit([change("insert", 1, title="a", n="1")], "0_inf", refetch=True))
        store.connection.execute('CREATE TABLE "_replica_rows_items" ("seq" INTEGER PRIMARY KEY, "op" INTEGER)')
        store.connection.execute(
            'INSERT INTO "_replica_stages" ("name", "definition", "handle", "offset", "refetch", "changes") '
            "VALUES ('items', ?, 'h1', '5_0', 0, 3)", (ITEMS.definition(),))
    with Store(path) as store:
        assert store.checkpoint(ITEMS) == commit([], "0_inf").checkpoint  # the published position
        assert store.status("items")[0].staged == 0
        assert not store.connection.execute("SELECT 1 FROM sqlite_schema WHERE name = '_replica_rows_items'").fetchall()
