"""A table's first snapshot is staged in its own layout and renamed into place (R1, R2, R3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_store import ITEMS, change, commit, rows  # noqa: F401  (shared helpers)

from replica.errors import ProtocolError, StoreError
from replica.store.store import Store

SHADOW = "_replica_new_items"


def tables(store: Store) -> list[str]:
    return [r[0] for r in store.connection.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name IN ('items', ?, '_replica_rows_items')",
        (SHADOW,))]


@pytest.mark.guarantee("R2")
def test_a_first_snapshot_is_staged_invisibly_and_renamed_into_place(tmp_path: Path) -> None:
    with Store(tmp_path / "a.db") as store:
        store.apply(commit([], "0_0", up_to_date=False, refetch=True))  # a first response without rows
        store.apply(commit([change("insert", i, title=f"t{i}", n=str(i)) for i in range(1, 6)], "0_1",
                           up_to_date=False))
        assert tables(store) == [SHADOW] and rows(tmp_path / "a.db") == []  # readers see no table yet
        store.apply(commit([change("insert", 3, title="again", n="33"), change("delete", 5)], "0_2",
                           up_to_date=False))
        applied = store.apply(commit([change("update", 1, n="10"), change("insert", 6, title="t6", n="6")], "0_inf"))
        assert tables(store) == ["items"]
        assert rows(tmp_path / "a.db") == [(1, "t1", 10), (2, "t2", 2), (3, "again", 33), (4, "t4", 4),
                                           (6, "t6", 6)]  # every change applied in log order
        assert (applied.inserted, applied.rows, applied.refetch, applied.keys) == (5, 5, True, {})
        status = store.status("items")[0]
        assert (status.offset, status.rows, status.staged) == ("0_inf", 5, 0)


@pytest.mark.guarantee("R3")
@pytest.mark.parametrize("first", [True, False], ids=["first snapshot (shadow)", "refetch (typed stage)"])
def test_a_bad_value_leaves_the_stage_as_it_was(tmp_path: Path, first: bool) -> None:
    with Store(tmp_path / "b.db") as store:
        if not first:  # the table exists: the refetch stages typed
            store.apply(commit([change("insert", 100, title="old", n="100")], "0_inf", refetch=True, handle="h0"))
        store.apply(commit([change("insert", 1, title="a", n="1")], "0_0", up_to_date=False, refetch=True))
        with pytest.raises(ProtocolError, match="'n'"):
            store.apply(commit([change("insert", 2, title="b", n="two")], "0_1", up_to_date=False))
        with pytest.raises(ProtocolError, match="primary-key"):
            store.apply(commit([change("insert", 2, title="b", n="2")._replace(
                value={"id": None, "title": "b", "n": "2"})], "0_1", up_to_date=False))
        checkpoint = store.checkpoint(ITEMS)
        assert checkpoint is not None and (checkpoint.offset, checkpoint.up_to_date) == ("0_0", False)
        typed = 'SELECT "c0", "c1", "c2" FROM "_replica_rows_items" WHERE seq > 0'
        staged = f'SELECT * FROM "{SHADOW}"' if first else typed
        assert store.connection.execute(staged).fetchall() == [(1, "a", 1)]


@pytest.mark.guarantee("R3")
def test_a_first_snapshot_staged_with_other_overrides_is_fetched_again(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with Store(path) as store:
        store.apply(commit([change("insert", 1, title="a", n="1")], "0_0", up_to_date=False, refetch=True))
    with Store(path, overrides={"items": {"n": "text"}}) as store:
        assert store.checkpoint(ITEMS) is None  # resume from scratch: the staged values have other types
        with pytest.raises(StoreError, match="fetched again"):
            store.apply(commit([], "0_inf"))
        store.apply(commit([change("insert", 1, title="a", n="1")], "0_0", up_to_date=False, refetch=True))
        store.apply(commit([], "0_inf"))
        assert rows(path) == [(1, "a", "1")]


def test_a_view_made_before_the_first_sync_still_gets_its_table(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        store.connection.execute("CREATE VIEW open_items AS SELECT id, title FROM items WHERE n > 1")
        store.apply(commit([change("insert", i, title=f"t{i}", n=str(i)) for i in range(1, 4)], "0_0",
                           up_to_date=False, refetch=True))
        store.apply(commit([], "0_inf"))  # SQLite refuses the rename while the view names a missing table
        assert store.connection.execute("SELECT * FROM open_items ORDER BY id").fetchall() == [(2, "t2"), (3, "t3")]
        assert tables(store) == ["items"]


def test_a_refetch_of_an_existing_table_stages_typed_not_in_a_shadow(tmp_path: Path) -> None:
    with Store(tmp_path / "e.db") as store:
        store.apply(commit([change("insert", 1, title="a", n="1")], "0_inf", refetch=True))
        store.apply(commit([change("insert", 2, title="b", n="2")], "0_0", up_to_date=False, refetch=True,
                           handle="h2"))
        assert tables(store) == ["items", "_replica_rows_items"]
        assert rows(tmp_path / "e.db") == [(1, "a", 1)]  # the old rows stay visible until the publish
        store.apply(commit([], "0_inf", handle="h2"))
        assert rows(tmp_path / "e.db") == [(2, "b", 2)]
