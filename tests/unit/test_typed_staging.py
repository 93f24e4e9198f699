"""Typed staging: rows are converted once on arrival and published in SQL (R1, R2, R3, R10).

Typed staging serves bursts and refetches of tables that exist; a table's first snapshot is
staged in its own layout instead (tests/unit/test_shadow.py). So each test here first publishes
the table, then stages on top of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_store import ITEMS, change, commit, rows  # noqa: F401  (shared helpers)

from replica.errors import StoreError
from replica.store.store import Store


def existing(store: Store) -> Store:
    """The table published once (row 100), so what follows stages typed."""
    store.apply(commit([change("insert", 100, title="old", n="100")], "0_inf", refetch=True, handle="h0"))
    return store


def staged_tables(store: Store) -> list[str]:
    return [r[0] for r in store.connection.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE '\\_replica\\_rows\\_%' ESCAPE '\\'"
    )]


@pytest.mark.guarantee("R2")
def test_a_snapshot_of_whole_rows_is_staged_typed_and_published_in_one_copy(tmp_path: Path) -> None:
    with existing(Store(tmp_path / "a.db")) as store:
        store.apply(commit([change("insert", i, title=f"t{i}", n=str(i)) for i in range(1, 6)], "0_0",
                           up_to_date=False, refetch=True))
        assert staged_tables(store) == ["_replica_rows_items"]
        typed = store.connection.execute('SELECT "c0", "c2" FROM "_replica_rows_items" WHERE seq > 0').fetchall()
        assert typed[0] == (1, 1)  # converted once, on arrival
        store.apply(commit([change("insert", 3, title="again", n="33")], "0_1", up_to_date=False))
        applied = store.apply(commit([change("insert", 6, title="t6", n="6")], "0_inf"))
        assert applied.inserted == 7 and applied.rows == 6 and applied.refetch
        assert rows(tmp_path / "a.db")[2] == (3, "again", 33)  # log order: the later insert wins
        assert staged_tables(store) == []


def test_a_mixed_burst_replays_typed_values_in_order(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as store:
        store.apply(commit([change("insert", 1, title="one", n="1"), change("insert", 2, title="two", n="2")],
                           refetch=True))
        store.apply(commit([change("update", 1, n="10"), change("insert", 3, title="three", n="3")], "5_0",
                           up_to_date=False))
        store.apply(commit([change("delete", 2), change("update", 3, title="THREE")], "6_0", up_to_date=False))
        applied = store.apply(commit([], "6_0", cursor="c1"))
        assert (applied.inserted, applied.updated, applied.deleted) == (1, 2, 1)
        assert rows(tmp_path / "b.db") == [(1, "one", 10), (3, "THREE", 3)]


@pytest.mark.guarantee("R3")
def test_rows_staged_with_other_overrides_are_fetched_again(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    with existing(Store(path)) as store:
        store.apply(commit([change("insert", 1, title="a", n="1")], "0_0", up_to_date=False, refetch=True))
    with Store(path, overrides={"items": {"n": "text"}}) as store:
        assert store.checkpoint(ITEMS) is None  # resume from scratch: the staged values have other types
        with pytest.raises(StoreError, match="overrides"):
            store.apply(commit([], "0_inf"))
        store.apply(commit([change("insert", 1, title="a", n="1")], "0_0", up_to_date=False, refetch=True))
        store.apply(commit([], "0_inf"))
        assert rows(path) == [(1, "a", "1")]
