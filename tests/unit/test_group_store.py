"""The store's side of consistency groups and txids: members stage what reached up-to-date, and one
transaction publishes every member at one LSN (R11); published transactions and snapshots are
remembered for txid waits, also after a restart."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from test_store import SCHEMA, rows

from replica.errors import StoreError
from replica.protocol import Change, Checkpoint, Commit, Shape
from replica.protocol.txids import Visibility
from replica.protocol.wire import build_key
from replica.store import Store, txlog

A, B = Shape("items", name="a"), Shape("items", name="b")
SEEN = Visibility(100, 105, frozenset({102}))


def change(op: str, id: int, lsn: int | None = None, txid: int | None = None, **cols: str | None) -> Change:
    headers: dict[str, Any] = {"operation": op}
    if lsn is not None:
        headers.update(lsn=str(lsn), op_position=0, txids=[txid or lsn])
    return Change(op, build_key("public", "items", [str(id)]), {"id": str(id), **cols}, headers)


def commit(shape: Shape, changes: list[Change], offset: str, *, up_to_date: bool = True, refetch: bool = False,
           complete: int | None = None, snapshot: Visibility | None = None, handle: str = "h1") -> Commit:
    checkpoint = Checkpoint(handle, offset, None, SCHEMA, up_to_date)
    return Commit(shape, tuple(changes), checkpoint, up_to_date, refetch, complete=complete, snapshot=snapshot)


def first_sync(store: Store, shape: Shape, values: list[Change], complete: int) -> None:
    store.apply(commit(shape, values, "0_0", up_to_date=False, refetch=True, snapshot=SEEN), defer=True)
    store.apply(commit(shape, [], "0_inf", complete=complete), defer=True)


@pytest.mark.guarantee("R11")
def test_members_stay_invisible_until_the_group_publishes_them_at_one_lsn(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    with Store(db) as store:
        first_sync(store, A, [change("insert", 1, title="a1", n="1")], complete=50)
        first_sync(store, B, [change("insert", 1, title="b1", n="1")], complete=60)
        assert rows(db, "a") == [] and rows(db, "b") == []  # nothing visible before the group publishes
        assert store.pending(A) is not None and store.pending(A).snapshot_lsn == 50  # type: ignore[union-attr]
        # Live changes after the snapshots: A at 70 and 90, B at 80.
        store.apply(commit(A, [change("update", 1, lsn=70, title="a70")], "70_0", complete=70), defer=True)
        store.apply(commit(B, [change("insert", 2, lsn=80, title="b80")], "80_0", complete=80), defer=True)
        store.apply(commit(A, [change("insert", 3, lsn=90, title="a90")], "90_0", complete=90), defer=True)
        applied = {a.name: a for a in store.publish_group("default", [A, B], 80)}
        assert [r[:2] for r in rows(db, "a")] == [(1, "a70")]  # 90 waits: the group is at 80
        assert [r[:2] for r in rows(db, "b")] == [(1, "b1"), (2, "b80")]
        assert applied["a"].refetch and applied["a"].staged == 1 and applied["b"].staged == 0
        assert applied["a"].txids == (70,) and applied["b"].txids == (80,) and applied["a"].snapshot == SEEN
        assert store.checkpoint(A) == Checkpoint("h1", "90_0", None, SCHEMA, False)  # resumes after the staged 90
        assert store.checkpoint(B) == Checkpoint("h1", "80_0", None, SCHEMA, True)
        store.publish_group("default", [A, B], 95)
        assert [r[:2] for r in rows(db, "a")] == [(1, "a70"), (3, "a90")]
        assert store.checkpoint(A) == Checkpoint("h1", "90_0", None, SCHEMA, True) and store.pending(A) is None
    with closing(sqlite3.connect(db)) as reader:
        assert reader.execute('SELECT "name", "lsn" FROM "_replica_groups"').fetchall() == [("default", 95)]


@pytest.mark.guarantee("R11")
def test_a_snapshot_waits_for_its_up_to_date_and_a_later_transaction_vouches_for_it(tmp_path: Path) -> None:
    with Store(tmp_path / "w.db") as store:
        store.apply(commit(A, [change("insert", 1, title="a1")], "0_0", up_to_date=False, refetch=True, snapshot=SEEN),
                    defer=True)
        with pytest.raises(StoreError, match="not reached up-to-date"):
            store.publish_group("default", [A], 50)
        store.apply(commit(A, [], "0_inf", complete=50), defer=True)
        assert store.pending(A).witness is None  # type: ignore[union-attr]
        first_sync(store, B, [], complete=50)
        # SEEN is xmin 100, xmax 105, xip {102}: 104 is in the snapshot, 102 ran while it was taken;
        # neither says where it stands. 106 and 105 began after it (in either commit order).
        for lsn, txid in [(60, 104), (65, 102), (75, 106), (80, 105), (90, 107)]:
            store.apply(commit(B, [change("insert", lsn, lsn=lsn, txid=txid)], f"{lsn}_0", up_to_date=False),
                        defer=True)
            witness = store.pending(A).witness  # type: ignore[union-attr]
            assert witness == (None if lsn < 75 else 75)


@pytest.mark.parametrize(("xmax", "txid", "after"), [
    (2**32 + 5, 3, False), (2**32 + 5, 7, True),  # 32-bit txids widened next to an xid8 xmax
    (2**32 - 2, 1, True), (2**32 - 2, 2**32 - 3, False),  # across the wrap of the 32-bit counter
    (2**32 + 5, 2**32 + 5, True), (2**32 + 5, 2**32 + 4, False),  # xid8 txids compared as they are
])
def test_a_transaction_after_a_snapshot_is_told_by_its_txid_as_postgres_widens_it(
    tmp_path: Path, xmax: int, txid: int, after: bool
) -> None:
    with Store(tmp_path / "x.db") as store:
        store.apply(commit(B, [change("insert", 1, lsn=70, txid=txid)], "70_0", complete=70))
        assert txlog.first_after(store.connection, Visibility(xmax - 10, xmax, frozenset())) == (70 if after else None)


@pytest.mark.guarantee("R11")
def test_a_crash_between_a_members_stage_and_the_group_publish_keeps_both(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    with Store(db) as store:
        first_sync(store, A, [change("insert", 1, title="a1")], complete=50)
        first_sync(store, B, [change("insert", 1, title="b1")], complete=50)
        store.publish_group("default", [A, B], 50)
        store.apply(commit(A, [change("update", 1, lsn=70, title="a70")], "70_0", complete=70), defer=True)
    with Store(db) as store:  # a new process: the staged change and its position are still there
        assert store.checkpoint(A) == Checkpoint("h1", "70_0", None, SCHEMA, False)
        assert store.pending(A) == store.pending(A) and store.pending(A).changes == 1  # type: ignore[union-attr]
        store.publish_group("default", [A, B], 70)
        assert [r[:2] for r in rows(db, "a")] == [(1, "a70")]


def test_published_txids_and_snapshots_are_remembered_and_bounded(tmp_path: Path, monkeypatch: Any) -> None:
    db = tmp_path / "t.db"
    with Store(db) as store:
        store.apply(commit(A, [change("insert", 1, title="x")], "0_0", up_to_date=False, refetch=True,
                           snapshot=SEEN))
        store.apply(commit(A, [change("insert", 2, lsn=70, txid=801)], "70_0", complete=70))
        store.apply(commit(A, [change("insert", 3, lsn=71, txid=802)], "71_0", up_to_date=False))
        recent, snapshots = store.visible()
        assert [(t, lsn, name) for t, lsn, name, _at in recent] == [(801, 70, "a")]  # 802 waits in a stage
        assert snapshots == [("a", SEEN)]
        store.apply(commit(A, [], "71_0", complete=71, handle="h1"))
        assert [t for t, *_ in store.visible()[0]] == [801, 802]
        monkeypatch.setattr(txlog, "KEEP_ROWS", 2)
        store.apply(commit(A, [change("insert", 4, lsn=72, txid=803)], "72_0", complete=72))
        assert [t for t, *_ in store.visible()[0]] == [802, 803]
    with Store(db) as store:  # and after a restart
        assert [t for t, *_ in store.visible()[0]] == [802, 803]


def test_a_database_from_before_groups_gets_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with closing(sqlite3.connect(db)) as old:
        old.executescript("""
            CREATE TABLE "_replica_stages" ("name" TEXT NOT NULL PRIMARY KEY COLLATE NOCASE, "definition" TEXT NOT NULL,
                "handle" TEXT, "offset" TEXT NOT NULL, "cursor" TEXT, "schema" TEXT, "refetch" INTEGER NOT NULL,
                "changes" INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE "_replica_staging" ("seq" INTEGER PRIMARY KEY, "name" TEXT NOT NULL COLLATE NOCASE,
                "operation" TEXT NOT NULL, "key" TEXT NOT NULL, "value" TEXT NOT NULL);
        """)
    with Store(db) as store:
        store.apply(commit(A, [change("insert", 1, lsn=5, title="x")], "5_0", up_to_date=False))
        assert store.pending(A) is not None
