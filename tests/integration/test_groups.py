"""Consistency groups against the fake (R11): shapes of one Replica are only visible at one common LSN.

A transaction that moves value between a row of one table and a row of another never shows half
done; a change to one shape is published promptly although the others are quiet (probes); the first
visible state waits for every member; ``group=None`` publishes on its own.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from oracle import expected, local, pk_of

from replica import Backoff, Replica, Shape
from replica.testing import FakeElectric, Fault, serve_in_thread

pytestmark = pytest.mark.integration
COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "amount": {"type": "int8"}}
ROWS, EACH = 50, 100


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


def accounts(long_poll: float = 1.0) -> FakeElectric:
    fake = FakeElectric(long_poll_timeout=long_poll)
    for table in ("acct_a", "acct_b"):
        fake.create_table(table, COLUMNS, rows=[{"id": str(i), "amount": str(EACH)} for i in range(1, ROWS + 1)])
    return fake


def totals(db: Path) -> tuple[int, int] | None:
    """(sum of both tables, rows) as a reader sees them; None before both exist."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0) as conn:
            row = conn.execute("SELECT (SELECT sum(amount) FROM acct_a) + (SELECT sum(amount) FROM acct_b), "
                               "(SELECT count(*) FROM acct_a) + (SELECT count(*) FROM acct_b)").fetchone()
    except sqlite3.OperationalError:
        return None
    return row[0], row[1]


def transfer(fake: FakeElectric, values: dict[tuple[str, int], int], i: int) -> None:
    a, b = 1 + (i * 7) % ROWS, 1 + (i * 11) % ROWS
    values[("acct_a", a)] -= 5
    values[("acct_b", b)] += 5
    with fake.transaction() as tx:  # one Postgres transaction: one LSN in both shapes' logs
        tx.update("acct_a", {"id": str(a), "amount": str(values[("acct_a", a)])})
        tx.update("acct_b", {"id": str(b), "amount": str(values[("acct_b", b)])})


def converged(fake: FakeElectric, db: Path) -> bool:
    return all(local(db, t, pk_of(fake, t)) == expected(fake, t) for t in ("acct_a", "acct_b"))


def wait(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.guarantee("R11")
@pytest.mark.parametrize("lag", [False, True], ids=["in_step", "snapshots_ahead_of_their_lsn"])
def test_a_transfer_between_two_tables_is_never_half_visible(tmp_path: Path, lag: bool) -> None:
    fake = accounts()
    fake.lag_snapshots = lag  # as on real Postgres: a snapshot may hold a transaction past its up-to-date's LSN
    db = tmp_path / "g.db"
    values = {(t, i): EACH for t in ("acct_a", "acct_b") for i in range(1, ROWS + 1)}
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def writer() -> None:
        for i in range(400):
            if stop.is_set():
                return
            transfer(fake, values, i)
            if i == 150 or (lag and i % 50 == 25):
                # One member starts over: the group holds at its old rows meanwhile. With lag, its new
                # snapshot holds the transfer just made at the LSN before it, and nothing follows for a while.
                fake.rotate("acct_b" if i % 100 < 50 else "acct_a")
                time.sleep(0.3 if lag else 0)
            time.sleep(0.004)

    with serve_in_thread(fake) as server, Replica(db, server.url, [Shape("acct_a"), Shape("acct_b")]) as replica:
        assert replica.wait_until_synced(30)
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            while thread.is_alive():
                found = totals(db)
                if found is not None:
                    seen.append(found)
        finally:
            stop.set()
            thread.join()
        wait(lambda: converged(fake, db), 30, "convergence")
    assert len(seen) > 100
    bad = [s for s in seen if s != (2 * ROWS * EACH, 2 * ROWS)]
    assert bad == [], f"{len(bad)} of {len(seen)} reads saw a total Postgres never had: {bad[:5]}"


def test_a_change_to_one_shape_is_published_promptly_while_the_other_is_quiet(tmp_path: Path) -> None:
    fake = accounts(long_poll=20.0)  # a quiet member's long-poll would hold 20 s
    db = tmp_path / "g.db"
    with serve_in_thread(fake) as server, Replica(db, server.url, [Shape("acct_a"), Shape("acct_b")]) as replica:
        assert replica.wait_until_synced(30)
        time.sleep(0.5)  # both are long-polling now
        started = time.monotonic()
        fake.update("acct_a", {"id": "1", "amount": "7"})
        wait(lambda: local(db, "acct_a", ["id"])[(1,)]["amount"] == 7, 10, "the change")
        assert time.monotonic() - started < 5, "the quiet member was not asked to catch up"


def test_the_first_visible_state_waits_for_every_member(tmp_path: Path) -> None:
    fake = accounts()
    fake.faults.add(Fault("stall", seconds=2.0, phase="initial", times=1))  # one member's snapshot is late
    db = tmp_path / "g.db"
    seen_alone = []
    with serve_in_thread(fake) as server, Replica(db, server.url, [Shape("acct_a"), Shape("acct_b")]) as replica:
        while not replica.wait_until_synced(0.01):
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            except sqlite3.OperationalError:  # not created yet
                continue
            if ("acct_a" in tables) != ("acct_b" in tables):
                seen_alone.append(tables)
        assert replica.status()[0].rows == ROWS and replica.status()[1].rows == ROWS
    assert seen_alone == []


@pytest.mark.parametrize("fault", [Fault("status", status=503, phase="catchup", times=6),
                                   Fault("reset", phase="catchup", times=6)], ids=["503", "reset"])
def test_a_failed_catch_up_is_asked_again(tmp_path: Path, fault: Fault) -> None:
    """In a quiet database a first sync is published once a catch-up sent after the snapshots settled
    answers (design.md §3c); nothing else will move the group, so a catch-up that fails must be asked
    again (after a backoff, R5), not leave the group waiting for a change that may never come."""
    fake = accounts(long_poll=20.0)
    fake.faults.add(fault)  # the first requests past the snapshots are the groups' catch-ups
    db = tmp_path / "g.db"
    with serve_in_thread(fake) as server, Replica(db, server.url, [Shape("acct_a"), Shape("acct_b")]) as replica:
        assert replica.wait_until_synced(10), replica.status()
    assert fake.faults.fired == [fault] * 6


def test_transactions_of_an_earlier_history_do_not_vouch_for_a_new_snapshot(tmp_path: Path) -> None:
    """Behind the same URL the database was reset (a new fake: xids and LSNs start over), so every shape
    gets a 409 and refetches. Transactions recorded from the old history have xids at or above the new
    snapshots' xmax, but they must not vouch for them: their LSNs are from the old history, and a group
    bounded by one would never publish (design.md §3c; found by scripts/bench/groups.py reusing a file)."""
    db = tmp_path / "g.db"
    shapes = [Shape("acct_a"), Shape("acct_b")]
    first, values = accounts(long_poll=20.0), {(t, i): EACH for t in ("acct_a", "acct_b") for i in range(1, ROWS + 1)}
    with serve_in_thread(first) as server, Replica(db, server.url, shapes) as replica:
        assert replica.wait_until_synced(10)
        for i in range(20):
            transfer(first, values, i)
        wait(lambda: converged(first, db), 20, "the first history")
    second = accounts(long_poll=20.0)
    second.update("acct_a", {"id": "1", "amount": "1"})  # and rows that differ, to see the new ones arrive
    with serve_in_thread(second) as server, Replica(db, server.url, shapes) as replica:
        assert replica.wait_until_synced(10), replica.status()
        assert converged(second, db)


def test_a_shape_outside_any_group_publishes_on_its_own(tmp_path: Path) -> None:
    fake = accounts(long_poll=20.0)
    fake.faults.add(Fault("stall", seconds=30.0, phase="initial", times=1))  # the first shape asked waits long
    db = tmp_path / "g.db"
    with serve_in_thread(fake) as server, Replica(db, server.url, [Shape("acct_a", group=None),
                                                                   Shape("acct_b", group=None)]) as replica:
        wait(lambda: any(s.state == "live" for s in replica.status()), 10, "one shape on its own")
        assert sum(s.state == "live" for s in replica.status()) == 1


def test_run_once_returns_when_the_group_has_published_every_member(tmp_path: Path) -> None:
    import anyio

    fake = accounts(long_poll=20.0)
    db = tmp_path / "g.db"
    with serve_in_thread(fake) as server:
        started = time.monotonic()
        anyio.run(lambda: Replica(db, server.url, [Shape("acct_a"), Shape("acct_b")]).run(once=True))
        fake.update("acct_b", {"id": "1", "amount": "1"})  # after a first run: a second resumes and catches up
        anyio.run(lambda: Replica(db, server.url, [Shape("acct_a"), Shape("acct_b")]).run(once=True))
        assert time.monotonic() - started < 15, "a member waited for a long-poll"
    assert converged(fake, db)
