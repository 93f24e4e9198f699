"""A burst on top of the published rows waits in _replica_staging, raw, and is applied in log order (R1, R2, R3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_store import ITEMS, change, commit, rows

from replica.errors import ProtocolError
from replica.store.store import Store


def staged(store: Store) -> list[tuple[str, str]]:
    return store.connection.execute('SELECT "operation", "value" FROM "_replica_staging" ORDER BY seq').fetchall()


@pytest.mark.guarantee("R2")
def test_a_mixed_burst_is_staged_raw_and_replayed_in_order(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as store:
        store.apply(commit([change("insert", 1, title="one", n="1"), change("insert", 2, title="two", n="2")],
                           refetch=True))
        store.apply(commit([change("update", 1, n="10"), change("insert", 3, title="three", n="3")], "5_0",
                           up_to_date=False))
        store.apply(commit([change("delete", 2), change("update", 3, title="THREE")], "6_0", up_to_date=False))
        assert [op for op, _ in staged(store)] == ["update", "insert", "delete", "update"]
        assert rows(tmp_path / "b.db") == [(1, "one", 1), (2, "two", 2)]  # invisible until up-to-date
        applied = store.apply(commit([], "6_0", cursor="c1"))
        assert (applied.inserted, applied.updated, applied.deleted) == (1, 2, 1)
        assert rows(tmp_path / "b.db") == [(1, "one", 10), (3, "THREE", 3)]
        assert staged(store) == []


@pytest.mark.guarantee("R3")
def test_a_bad_value_in_a_burst_is_named_when_it_arrives_and_nothing_is_staged(tmp_path: Path) -> None:
    with Store(tmp_path / "c.db") as store:
        store.apply(commit([change("insert", 1, title="one", n="1")], refetch=True))
        with pytest.raises(ProtocolError, match="'n'"):
            store.apply(commit([change("insert", 2, title="b", n="1"), change("update", 1, n="x")], "5_0",
                               up_to_date=False))
        assert staged(store) == [] and store.checkpoint(ITEMS) == commit([], "0_inf").checkpoint
