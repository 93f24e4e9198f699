"""Both dev servers (FakeElectric and the Postgres dev server) send Electric's caching headers exactly
as electric-protocol.md §2.2-§2.3 says, and nothing that would stop a caching proxy from storing an
answer (a fleet behind nginx depends on it: tests/integration/test_fleet.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from pg import sql, wait_for

from replica.protocol import wire
from replica.testing import FakeElectric
from replica.testing.fake.responses import FakeResponse

INITIAL = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
NON_LIVE = "public, max-age=60, stale-while-revalidate=300"
LIVE = "public, max-age=5, stale-while-revalidate=5"
GONE = "public, max-age=60, must-revalidate"
# Headers with which a shared cache would not store an answer, or would store one per client.
DEFEATING = ("set-cookie", "vary", "pragma", "expires", "authorization")


class Source:
    """A dev server with one table ``items`` (id, title), and a way to change a row."""

    def __init__(self, respond: Callable[[str, str, dict[str, str] | None], FakeResponse],
                 change: Callable[[], None]) -> None:
        self._respond, self.change = respond, change

    def get(self, headers: dict[str, str] | None = None, **params: str) -> FakeResponse:
        return self._respond("GET", "/v1/shape?" + urlencode({"table": "items", **params}), headers)


@pytest.fixture
def fake_source() -> Source:
    fake = FakeElectric(long_poll_timeout=0.5)
    fake.create_table("items", {"id": {"type": "int4", "pk_index": 0, "not_null": True}, "title": {"type": "text"}},
                      [{"id": "1", "title": "a"}])
    return Source(lambda m, t, h: fake.respond(m, t, h), lambda: fake.insert("items", {"id": "2", "title": "b"}) and None)


@pytest.fixture
def pg_source(pg_dsn: str) -> Iterator[Source]:
    from replica.testing.postgres.server import PostgresElectric

    sql(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, title text)")
    sql(pg_dsn, "INSERT INTO items VALUES (1, 'a')")
    with PostgresElectric(pg_dsn, long_poll_timeout=0.5) as running:
        yield Source(lambda m, t, h: running.respond(m, t, h), lambda: sql(pg_dsn, "INSERT INTO items VALUES (2, 'b')")
                     and None)


def check_headers(source: Source) -> None:
    first = source.get(offset="-1")
    assert first.status == 200 and first.headers[wire.H_CACHE_CONTROL] == INITIAL
    assert wire.H_SCHEMA in first.headers and wire.H_CURSOR not in first.headers and wire.H_ETAG in first.headers
    handle, offset = first.headers[wire.H_HANDLE], first.headers[wire.H_OFFSET]
    again = source.get({"if-none-match": first.headers[wire.H_ETAG]}, offset="-1")
    assert again.status == 304 and again.body == b"" and again.headers[wire.H_CACHE_CONTROL] == INITIAL
    responses = [first, again]
    while wire.H_UP_TO_DATE not in responses[-1].headers:  # the catch-up to up-to-date
        response = source.get(offset=offset, handle=handle)
        assert response.status == 200 and response.headers[wire.H_CACHE_CONTROL] == NON_LIVE
        offset = response.headers[wire.H_OFFSET]
        responses.append(response)

    source.change()
    live: dict[str, Any] = {}

    def answered() -> bool:
        response = source.get(offset=offset, handle=handle, live="true", cursor="")
        live["response"] = response
        return response.status == 200 and response.headers.get(wire.H_HAS_DATA) == "true"

    wait_for(answered, what="a live answer with the change")
    response = live["response"]
    responses.append(response)
    assert response.headers[wire.H_CACHE_CONTROL] == LIVE and wire.H_SCHEMA not in response.headers
    cursor = response.headers[wire.H_CURSOR]
    assert cursor.isdigit()
    echoed = source.get(offset=offset, handle=handle, live="true", cursor=cursor)
    assert int(echoed.headers[wire.H_CURSOR]) > int(cursor)  # the echo makes the next live URL new
    assert echoed.headers[wire.H_CACHE_CONTROL] == LIVE

    gone = source.get(offset=offset, handle="no-such-handle")
    assert gone.status == 409 and gone.headers[wire.H_CACHE_CONTROL] == GONE
    assert gone.headers[wire.H_HANDLE] == handle and wire.H_OFFSET not in gone.headers
    bad = source.get(offset="1_2_3")
    assert bad.status == 400 and bad.headers[wire.H_CACHE_CONTROL] == "no-store"
    assert bad.headers["surrogate-control"] == "no-store"
    for answer in [*responses, echoed, gone]:
        assert not set(DEFEATING) & set(answer.headers), answer.headers


def test_the_fake_sends_electrics_caching_headers(fake_source: Source) -> None:
    check_headers(fake_source)


@pytest.mark.postgres
def test_the_postgres_dev_server_sends_electrics_caching_headers(pg_source: Source) -> None:
    check_headers(pg_source)
