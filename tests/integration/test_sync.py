"""Replica end to end against FakeElectric: in-process (MockTransport) and over loopback sockets."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from oracle import expected, local, pk_of

from replica import Backoff, Replica, Shape, ShapeError
from replica.testing import FakeElectric, serve_in_thread

pytestmark = pytest.mark.anyio

COLUMNS = {
    "id": {"type": "int8", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "done": {"type": "bool"},
    "price": {"type": "numeric"},
    "tags": {"type": "text", "dims": 1},
}
PK = ("id",)


def row(i: int, title: str | None = None) -> dict[str, str | None]:
    return {"id": str(i), "title": title or f"item {i}", "done": "t" if i % 2 else "f", "price": f"{i}.50",
            "tags": '{a,"b c",NULL}' if i % 3 else "{}"}


def make_fake(n: int = 50, *, chunk_bytes: int = 2048, **kwargs: object) -> FakeElectric:
    fake = FakeElectric(chunk_bytes=chunk_bytes, long_poll_timeout=0.3, **kwargs)
    fake.create_table("items", COLUMNS, rows=[row(i) for i in range(1, n + 1)])
    return fake


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "replica.db"


def in_process(fake: FakeElectric, db: Path, shapes: object = None, **kwargs: object) -> Replica:
    return Replica(db, "http://fake/v1/shape", shapes or Shape("items"),
                   transport=httpx.MockTransport(fake.handler), **kwargs)  # type: ignore[arg-type]


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.01)


def converged(fake: FakeElectric, db: Path, name: str = "items", **shape: object) -> bool:
    return local(db, name, pk_of(fake, "items")) == expected(fake, "items", **shape)  # type: ignore[arg-type]


def requests_with(fake: FakeElectric, **params: str) -> list[dict[str, list[str]]]:
    found = []
    for _method, target, *_ in fake.requests:
        query = parse_qs(urlsplit(target).query, keep_blank_values=True)
        if all(query.get(k) == [v] for k, v in params.items()):
            found.append(query)
    return found


@pytest.mark.guarantee("R9")
async def test_initial_multichunk_sync_then_live_changes(db: Path) -> None:
    fake = make_fake(200)
    seen = []
    replica = in_process(fake, db, on_commit=seen.append)
    async with replica:
        with anyio.fail_after(10):
            await replica.synced()
        assert converged(fake, db)
        assert len(requests_with(fake, live="true")) <= 1
        assert len([q for q in requests_with(fake) if "live" not in q]) >= 4  # a multi-chunk snapshot
        fake.insert("items", row(1000))
        fake.update("items", {"id": "1", "title": "changed"})
        fake.delete("items", {"id": "2"})
        with fake.transaction() as tx:
            tx.insert("items", row(1001))
            tx.update("items", {"id": "3", "price": "0.01"})
        await eventually(lambda: converged(fake, db))
        (state,) = replica.status()
        assert state.state == "live" and state.rows == 201 and state.handle and state.last_synced_at
    assert seen[0].refetch and not seen[-1].refetch
    assert sum(a.inserted for a in seen[1:]) >= 1 and any(a.deleted for a in seen)


async def test_changes_iterator_reports_keys(db: Path) -> None:
    fake = make_fake(5)
    replica = in_process(fake, db)
    async with replica:
        await replica.synced()
        received = []

        async def consume() -> None:
            async for applied in replica.changes():
                received.append(applied)
                if applied.deleted:
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.05)
            fake.update("items", {"id": "1", "title": "x"})
            fake.delete("items", {"id": "4"})
    keys = {op: [k for a in received for k in a.keys.get(op, ())] for op in ("insert", "update", "delete")}
    assert keys == {"insert": [], "update": ['"public"."items"/"1"'], "delete": ['"public"."items"/"4"']}
    assert sum(a.updated for a in received) == 1 and received[-1].rows == 4


@pytest.mark.guarantee("R3")
async def test_second_run_resumes_from_stored_handle_and_offset(db: Path) -> None:
    fake = make_fake(30)
    await in_process(fake, db).run(once=True)
    first = len(fake.requests)
    fake.insert("items", row(500))
    fake.delete("items", {"id": "5"})
    await in_process(fake, db).run(once=True)
    resumed = fake.requests[first:]
    assert resumed, "the second run sent nothing"
    query = parse_qs(urlsplit(resumed[0][1]).query)
    assert query["offset"] != ["-1"] and "handle" in query
    assert converged(fake, db)


@pytest.mark.guarantee("R8")
async def test_changed_definition_restarts_but_keeps_rows_until_the_new_snapshot(db: Path) -> None:
    fake = make_fake(20)
    await in_process(fake, db).run(once=True)
    narrowed = Shape("items", where="id <= $1", params={"1": "5"})
    await in_process(fake, db, narrowed).run(once=True)
    assert converged(fake, db, where="id <= $1", params={"1": "5"})


READER = """
import json, sqlite3, sys, time
db, stop = sys.argv[1], sys.argv[2]
seen = set()
import os
while not os.path.exists(stop):
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            seen.add(tuple(conn.execute("SELECT count(*), coalesce(sum(id), 0) FROM items").fetchone()))
    except sqlite3.OperationalError:  # no file or table yet
        seen.add((0, 0))
print(json.dumps(sorted(seen)))
"""


@pytest.mark.guarantee("R2")
@pytest.mark.integration
def test_readers_never_see_a_partial_snapshot_or_refetch(db: Path, tmp_path: Path) -> None:
    # The reader is another process with another SQLite (the stdlib's): the way apps read.
    fake = make_fake(300, chunk_bytes=1500)
    allowed = {(0, 0), (300, sum(range(1, 301))), (200, sum(range(101, 301)))}
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(db), str(stop)], stdout=subprocess.PIPE, text=True)
    with serve_in_thread(fake) as server:
        replica = Replica(db, server.url, Shape("items"))
        try:
            replica.start()
            assert replica.wait_until_synced(10)
            with fake.transaction() as tx:
                for i in range(1, 101):
                    tx.delete("items", {"id": str(i)})
            fake.rotate("items")  # a 409, then a multi-chunk refetch of the 200 rows left
            deadline = time.monotonic() + 10
            while not (converged(fake, db) and len(requests_with(fake, offset="-1")) >= 2):
                assert time.monotonic() < deadline, "no refetch happened"
                time.sleep(0.02)
            time.sleep(0.2)
        finally:
            replica.stop()
            stop.touch()
            out, _ = reader.communicate(timeout=10)
    observed = {tuple(pair) for pair in json.loads(out)}
    assert (300, sum(range(1, 301))) in observed and (200, sum(range(101, 301))) in observed
    assert observed <= allowed, f"a reader saw a partial state: {sorted(observed - allowed)}"


# The fault × phase matrix lives in test_faults.py.


@pytest.mark.guarantee("R7")
async def test_a_refused_shape_stops_alone(db: Path) -> None:
    fake = make_fake(10)
    replica = in_process(fake, db, [Shape("items"), Shape("nope")])
    with pytest.raises(ShapeError, match="does not exist"):
        await replica.run(once=True)
    states = {s.name: s for s in replica.status()}
    assert states["nope"].state == "error" and "does not exist" in (states["nope"].error or "")
    assert states["items"].error is None
    assert converged(fake, db)


async def test_secret_and_token_refresh(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = make_fake(5, secret="right")
    with pytest.raises(ShapeError, match="401"):
        await in_process(fake, db, secret="CANARY-wrong").run(once=True)
    assert "CANARY" not in caplog.text
    token = {"value": "CANARY-expired"}

    def refresh(status: int) -> dict[str, str]:
        token["value"] = "right"
        return {}

    replica = in_process(fake, db, params={"secret": lambda: token["value"]}, on_unauthorized=refresh)
    await replica.run(once=True)
    assert converged(fake, db)
    assert "CANARY" not in caplog.text


@pytest.mark.guarantee("R6")
@pytest.mark.integration
def test_threaded_stop_returns_quickly_during_a_long_poll(db: Path) -> None:
    fake = FakeElectric(long_poll_timeout=20.0)
    fake.create_table("items", COLUMNS, rows=[row(1)])
    with serve_in_thread(fake) as server:
        replica = Replica(db, server.url, Shape("items"))
        replica.start()
        assert replica.wait_until_synced(10)
        time.sleep(0.2)  # now inside a 20 s long-poll
        started = time.monotonic()
        replica.stop()
        assert time.monotonic() - started < 1.0
    assert replica.status()[0].state == "stopped"


@pytest.mark.guarantee("R7")
async def test_an_unexpected_bug_in_one_shape_stops_only_that_shape(db: Path) -> None:
    fake = make_fake(10)

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("table") == "boom":
            raise RuntimeError("a bug nobody planned for")
        return await fake.handler(request)

    replica = Replica(db, "http://fake/v1/shape", [Shape("items"), Shape("boom")],
                      transport=httpx.MockTransport(handler))
    with pytest.raises(ShapeError, match="internal error"):
        await replica.run(once=True)
    states = {s.name: s for s in replica.status()}
    assert states["boom"].state == "error" and "RuntimeError" in (states["boom"].error or "")
    assert states["items"].state != "error" and converged(fake, db)


# --- the snapshot path: big chunks of inserts read by SQLite, staged while the next one downloads ---


async def test_a_chunked_snapshot_over_loopback_takes_the_sqlite_path_and_converges(
    db: Path, bulk_calls: list[tuple[bool, int]]
) -> None:
    fake = make_fake(3000, chunk_bytes=40_000)
    with serve_in_thread(fake) as server:
        async with Replica(db, server.url, Shape("items"), process="inline") as replica:  # bulk_calls spies here
            await replica.synced()
            assert converged(fake, db)
            fake.insert("items", row(5000))  # live changes still take the Python path
            fake.update("items", {"id": "7", "title": "seven"})
            await eventually(lambda: converged(fake, db))
    assert len(bulk_calls) >= 5 and set(bulk_calls) == {(True, 1)}  # each chunk converted ahead, then copied


class LyingFake(FakeElectric):
    """Sends one value its schema cannot hold (a bool column saying "maybe"), as a broken server might."""

    async def exchange(self, method: str, target: str, headers: Any = None, *, on_wire: bool = False) -> Any:
        response, fault = await super().exchange(method, target, headers, on_wire=on_wire)
        lie = re.sub(rb'("id": ?"2500",[^}]*"done": ?)"false"', rb'\1"maybe"', response.body)
        return replace(response, body=lie), fault


async def test_a_bad_value_in_a_big_chunk_is_refused_by_name_and_shows_no_partial_snapshot(
    db: Path, bulk_calls: list[tuple[bool, int]]
) -> None:
    fake = LyingFake(chunk_bytes=40_000, long_poll_timeout=0.3)
    fake.create_table("items", COLUMNS, rows=[row(i) for i in range(1, 3001)])
    with serve_in_thread(fake) as server:
        async with Replica(db, server.url, Shape("items"), process="inline") as replica:  # bulk_calls spies here
            await eventually(lambda: "maybe" in (replica.status()[0].error or ""))
            assert "column 'done' (bool): cannot store 'maybe'" in (replica.status()[0].error or "")
            assert local(db, "items", PK) == {}  # R2: the chunks staged before it stay invisible
    # Earlier chunks converted ahead and copied; the lying one's conversion failed, and so did the writer's.
    assert (True, 1) in bulk_calls and (False, 0) in bulk_calls
