"""The embedded API's seams: waiting with a timeout, `with` for threaded code, listeners that can be removed,
column types on the Shape, and the old names that still work with a DeprecationWarning."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import anyio
import httpx
import pytest

import replica as replica_module
from replica import Applied, Backoff, Replica, Shape, SyncEvent
from replica.testing import FakeElectric, Fault

pytestmark = pytest.mark.anyio
COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "price": {"type": "numeric"}}


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


def make_fake() -> FakeElectric:
    fake = FakeElectric(long_poll_timeout=0.3)
    fake.create_table("items", COLUMNS, rows=[{"id": "1", "price": "1.50"}])
    return fake


def in_process(fake: FakeElectric, db: Path, *shapes: Shape, **kwargs: object) -> Replica:
    return Replica(db, "http://fake/v1/shape", shapes or [Shape("items")],
                   transport=httpx.MockTransport(fake.handler), **kwargs)  # type: ignore[arg-type]


async def test_synced_waits_without_polling_and_gives_up_at_its_timeout(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake()
    fake.faults.add(Fault("status", status=503, times=10**9))  # never up to date while this lasts (until cleared)
    replica = in_process(fake, tmp_path / "a.db")
    sleeps: list[float] = []
    real_sleep = anyio.sleep

    async def counting_sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(delay)

    async with replica:
        monkeypatch.setattr(anyio, "sleep", counting_sleep)
        started = time.monotonic()
        assert await replica.synced(timeout=0.3) is False
        assert 0.25 < time.monotonic() - started < 2
        monkeypatch.undo()
        fake.faults.clear()
        assert await replica.synced(timeout=10) is True
        assert await replica.synced(timeout=0) is True  # already synced: at once
    assert sleeps == [] or all(delay == 0 for delay in sleeps)  # the retries' zero backoff, never a poll


async def test_synced_returns_false_at_once_when_every_shape_has_failed(tmp_path: Path) -> None:
    fake = make_fake()
    replica = in_process(fake, tmp_path / "a.db", Shape("missing"))
    async with replica:
        started = time.monotonic()
        assert await replica.synced(timeout=30) is False  # the run ended: no reason to wait 30 s
        assert time.monotonic() - started < 10
    assert replica.status()[0].state == "error"


def test_with_runs_a_replica_in_a_background_thread_and_stops_it(tmp_path: Path) -> None:
    fake = make_fake()
    with in_process(fake, tmp_path / "a.db") as replica:
        assert replica.wait_until_synced(timeout=10)
        assert replica.status()[0].state == "live"
    assert replica.status()[0].state == "stopped"


async def test_a_removed_listener_hears_nothing_more(tmp_path: Path) -> None:
    fake = make_fake()
    heard: list[str] = []

    def first(applied: Applied) -> None:
        heard.append(f"first {applied.rows}")

    def second(applied: Applied) -> None:
        heard.append(f"second {applied.rows}")

    replica = in_process(fake, tmp_path / "a.db", on_commit=first)
    replica.add_listener(second)
    async with replica:
        assert await replica.synced(timeout=10)
        replica.remove_listener(first)
        fake.insert("items", {"id": "2", "price": "2"})
        with anyio.fail_after(10):
            while len(heard) < 3:
                await anyio.sleep(0.01)
    assert heard == ["first 1", "second 1", "second 2"]
    with pytest.raises(ValueError):
        replica.remove_listener(first)


async def test_column_types_live_on_the_shape_and_the_old_overrides_keyword_warns(tmp_path: Path) -> None:
    fake = make_fake()
    events: list[SyncEvent] = []
    replica = in_process(fake, tmp_path / "a.db", Shape("items", types={"price": "real"}), observer=events.append)
    await replica.run(once=True)
    with closing(replica_module.connect(tmp_path / "a.db")) as db:
        assert db.execute("SELECT typeof(price) FROM items").fetchall() == [("real",)]
    assert {event.kind for event in events} >= {"response", "commit", "state"}
    with pytest.warns(DeprecationWarning, match="Shape"):
        old = in_process(fake, tmp_path / "b.db", overrides={"items": {"price": "real"}})
    assert old.shapes[0].overrides == {"price": "real"}


def test_tune_process_moved_to_replica_tuning() -> None:
    from replica.tuning import tune_process

    with pytest.warns(DeprecationWarning, match="replica.tuning.tune_process"):
        assert replica_module.tune_process is tune_process
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "tune_process" not in replica_module.__all__ and "SyncEvent" in replica_module.__all__
