"""Both dev servers answer live SSE requests as Electric does (``shapes/api.ex``, issue 20): headers,
cache-control, events per batch ending in up-to-date, keep-alive comments, the end after
``sse_timeout``, data there at once written and closed, a rotation ending the stream, SSE faults."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pg import sql

from replica.protocol import wire
from replica.protocol.sse import Comment, Event, EventStreamParser
from replica.testing import FakeElectric, Fault, serve_in_thread
from replica.testing.fake.responses import FakeResponse
from replica.testing.fake.service import ShapeService

pytestmark = pytest.mark.integration

SSE_TIMEOUT, KEEPALIVE = 1.2, 0.3


@dataclass
class Source:
    """A dev server with table ``items`` (id, title) and a way to write to it."""

    service: ShapeService
    insert: Callable[[int], None]
    rotate: Callable[[], None]


def fake_source() -> Iterator[Source]:
    fake = FakeElectric(long_poll_timeout=0.5, sse_timeout=SSE_TIMEOUT, keepalive_interval=KEEPALIVE)
    fake.create_table("items", {"id": {"type": "int4", "pk_index": 0, "not_null": True}, "title": {"type": "text"}},
                      rows=[{"id": "1", "title": "a"}])
    yield Source(fake, lambda i: fake.insert("items", {"id": str(i), "title": "x"}), lambda: fake.rotate("items"))


def postgres_source(dsn: str) -> Iterator[Source]:
    from replica.testing.postgres.server import PostgresElectric

    sql(dsn, "CREATE TABLE items (id int4 PRIMARY KEY, title text)")
    sql(dsn, "INSERT INTO items VALUES (1, 'a')")
    with PostgresElectric(dsn, long_poll_timeout=0.5, sse_timeout=SSE_TIMEOUT, keepalive_interval=KEEPALIVE) as pg:
        yield Source(pg, lambda i: sql(dsn, "INSERT INTO items VALUES (%s, 'x')", (i,)),
                     lambda: sql(dsn, "TRUNCATE items"))


@pytest.fixture(params=["fake", pytest.param("postgres", marks=pytest.mark.postgres)])
def source(request: pytest.FixtureRequest) -> Iterator[Source]:
    if request.param == "fake":
        yield from fake_source()
    else:
        yield from postgres_source(request.getfixturevalue("pg_dsn"))


def up_to_date(service: ShapeService) -> dict[str, str]:
    """The live position after the initial sync: handle, offset."""
    response = service.respond("GET", "/v1/shape?table=items&offset=-1")
    handle, offset = response.headers[wire.H_HANDLE], response.headers[wire.H_OFFSET]
    while wire.H_UP_TO_DATE not in response.headers:
        response = service.respond("GET", f"/v1/shape?table=items&offset={offset}&handle={handle}")
        offset = response.headers[wire.H_OFFSET]
    return {"table": "items", "handle": handle, "offset": offset, "live": "true", "live_sse": "true", "cursor": ""}


@dataclass
class Read:
    status: int
    headers: dict[str, str]
    items: list[tuple[float, Event | Comment]]  # seconds since the request, what arrived
    ended: float
    error: str | None = None


def read_stream(url: str, params: dict[str, str]) -> Read:
    started = time.monotonic()
    parser = EventStreamParser()
    items: list[tuple[float, Event | Comment]] = []
    error = None
    with httpx.Client(timeout=10) as client, client.stream("GET", url, params=params) as reply:
        try:
            for chunk in reply.iter_bytes():
                items += [(time.monotonic() - started, item) for item in parser.feed(chunk)]
        except httpx.RemoteProtocolError as exc:
            error = str(exc)
        return Read(reply.status_code, dict(reply.headers), items, time.monotonic() - started, error)


def events(read: Read) -> list[Any]:
    import json

    return [json.loads(item.data) for _, item in read.items if isinstance(item, Event)]


def test_a_held_stream_sends_batches_keep_alives_and_ends_after_sse_timeout(source: Source) -> None:
    params = up_to_date(source.service)
    with serve_in_thread(source.service) as server, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read_stream, server.url, params)
        time.sleep(0.5)  # one keep-alive (0.3 s) first
        source.insert(2)
        read = pending.result(10)
    assert read.status == 200
    headers = read.headers
    assert headers["content-type"] == "text/event-stream" and headers["connection"] == "keep-alive"
    assert headers["cache-control"] == "public, max-age=1"  # sse_timeout - 1 (59 with Electric's 60 s)
    assert headers[wire.H_OFFSET] == params["offset"] and headers[wire.H_HANDLE] == params["handle"]
    assert headers[wire.H_CURSOR].isdigit() and wire.H_UP_TO_DATE in headers and wire.H_SCHEMA not in headers
    comments = [(t, item) for t, item in read.items if isinstance(item, Comment)]
    assert comments and all(item.text == "keep-alive" for _, item in comments)
    assert KEEPALIVE * 0.8 <= comments[0][0] < 0.5  # after the interval without traffic, before the change
    messages = events(read)
    assert [m.get("key") for m in messages[:-1]] == ['"public"."items"/"2"']
    assert messages[-1]["headers"]["control"] == wire.UP_TO_DATE
    assert messages[-1]["headers"]["global_last_seen_lsn"] == messages[0]["headers"]["lsn"]
    assert SSE_TIMEOUT * 0.9 <= read.ended < SSE_TIMEOUT + 1.0 and read.error is None


def test_data_there_at_once_is_written_and_the_answer_closes(source: Source) -> None:
    params = up_to_date(source.service)
    source.insert(3)
    time.sleep(0.3)  # the Postgres source polls its slot
    with serve_in_thread(source.service) as server:
        read = read_stream(server.url, params)
    messages = events(read)
    assert read.ended < 0.5 and read.error is None
    assert [m.get("key") for m in messages[:-1]] == ['"public"."items"/"3"']
    assert messages[-1]["headers"]["control"] == wire.UP_TO_DATE
    assert read.headers[wire.H_OFFSET] == f'{messages[0]["headers"]["lsn"]}_0'  # the end of what it sent
    assert read.headers["content-type"] == "text/event-stream"


def test_a_rotation_ends_the_held_stream_and_the_reconnect_gets_409(source: Source) -> None:
    params = up_to_date(source.service)
    with serve_in_thread(source.service) as server, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read_stream, server.url, params)
        time.sleep(0.2)
        source.rotate()
        read = pending.result(10)
        assert read.ended < SSE_TIMEOUT * 0.9  # ended by the rotation, not the timeout
        again = httpx.get(server.url, params=params, timeout=5)
    assert again.status_code == 409 and again.json() == [{"headers": {"control": "must-refetch"}}]


def test_electric_s_defaults_and_the_pure_answer() -> None:
    fake = FakeElectric()
    fake.create_table("items", {"id": {"type": "int4", "pk_index": 0, "not_null": True}})
    params = up_to_date(fake)
    query = "&".join(f"{k}={v}" for k, v in params.items())
    response: FakeResponse = fake.respond("GET", "/v1/shape?" + query)  # respond() cannot hold: an empty stream
    assert response.status == 200 and response.body == b""
    assert response.headers["cache-control"] == "public, max-age=59"
    assert (fake.sse_timeout, fake.keepalive_interval) == (60.0, 21.0)
    legacy = fake.respond("GET", "/v1/shape?" + query.replace("live_sse", "experimental_live_sse"))
    assert legacy.headers["content-type"] == "text/event-stream"


@pytest.mark.parametrize("kind", ["sse_cut", "sse_buffer", "sse_silent"])
def test_sse_faults_on_the_wire(kind: str) -> None:
    source = next(fake_source())
    params = up_to_date(source.service)
    source.service.faults.add(Fault(kind))
    with serve_in_thread(source.service) as server, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read_stream, server.url, params)
        time.sleep(0.5)
        source.insert(4)
        read = pending.result(10)
    times = [t for t, _ in read.items]
    if kind == "sse_cut":
        assert read.error is not None and "incomplete" in read.error.lower()
        assert not [item for _, item in read.items if isinstance(item, Event)]  # the cut event never completes
    elif kind == "sse_buffer":
        assert len(events(read)) == 2 and min(times) >= SSE_TIMEOUT * 0.9  # everything at the end, at once
        assert any(isinstance(item, Comment) for _, item in read.items)
    else:
        assert read.items == [] and read.ended >= SSE_TIMEOUT * 0.9 and read.error is None
