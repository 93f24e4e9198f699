"""The official TypeScript client in ``liveSse`` mode against both dev servers (issue 20).

Same harness as ``test_official_client.py``: any error, warning (the client warns when it falls
back to long-polling), unexpected non-2xx answer or network error the client reports fails the
test. Each scenario checks that the live changes really came over held SSE answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pg import sql
from test_official_client import (  # noqa: F401  (fixtures)
    ITEMS,
    NodeDriver,
    Session,
    describe_requests,
    driver,
    make_session,
    query,
)

pytestmark = [pytest.mark.node, pytest.mark.integration]

SSE = {"sse_timeout": 2.0, "keepalive_interval": 0.5}


def sse_answers(session: Session, sid: str) -> list[dict[str, Any]]:
    requests = session.driver.requests(sid)
    streams = [r for r in requests if query(r["url"]).get("live_sse") == "true"]
    assert streams, "the client never asked for SSE:\n" + describe_requests(requests, 30)
    assert all(r.get("headers", {}).get("content-type") == "text/event-stream" for r in streams if r.get("status") == 200)
    return streams


def test_live_sse_follows_inserts_updates_and_deletes_across_streams(make_session: Callable[..., Session]) -> None:  # noqa: F811
    session = make_session(**SSE)
    sid = session.subscribe(live_sse=True)
    session.wait_synced(sid)
    fake = session.fake
    fake.insert("items", {"id": "100", "title": "new", "done": "f", "prio": "1"})
    session.wait_synced(sid)
    fake.update("items", {"id": "1", "title": "changed"})
    fake.delete("items", {"id": "2"})
    session.wait_synced(sid)
    time.sleep(SSE["sse_timeout"] + 0.5)  # the stream ends; the client reconnects where it was
    fake.insert("items", {"id": "102", "title": "after the reconnect", "done": "f", "prio": "3"})
    session.wait_synced(sid)
    assert len(sse_answers(session, sid)) >= 2


def test_a_multi_op_transaction_makes_the_official_client_fall_back(make_session: Callable[..., Session]) -> None:  # noqa: F811
    """The official client resumes from ``<global_last_seen_lsn>_0``, so it is sent the tail of a
    multi-op transaction again, at once, in a stream that closes at once (Electric writes data it
    has and ends the answer); three of those look like a buffering proxy and it long-polls from then
    on, with a warning. It still converges. replica resumes from the last change's own offset and
    stays on SSE (``tests/integration/test_sse.py``)."""
    session = make_session(**SSE)
    session.allowed_warnings = ["Falling back to long polling"]
    sid = session.subscribe(live_sse=True)
    session.wait_synced(sid)
    with session.fake.transaction() as tx:
        tx.insert("items", {"id": "101", "title": "a", "done": "t", "prio": "2"})
        tx.update("items", {"id": "3"}, new={"id": "103"})
    assert tx.lsn is not None
    session.wait_synced(sid)
    time.sleep(SSE["sse_timeout"] + 1.5)  # the held stream ends; the reconnects from <lsn>_0 begin
    session.fake.insert("items", {"id": "104", "title": "long-polled", "done": "f", "prio": "4"})
    session.wait_synced(sid)
    resumed = [query(r["url"])["offset"] for r in sse_answers(session, sid)]
    assert resumed.count(f"{tx.lsn}_0") >= 2, resumed
    assert any("Falling back to long polling" in w for w in session.warnings(sid))


def test_live_sse_rotation_409_at_reconnect(make_session: Callable[..., Session]) -> None:  # noqa: F811
    session = make_session(**SSE)
    session.allowed_status = {409}
    sid = session.subscribe(live_sse=True)
    session.wait_synced(sid)
    time.sleep(0.3)
    session.fake.rotate("items")
    session.fake.insert("items", {"id": "200", "title": "new handle", "done": "f", "prio": "0"})
    session.wait_synced(sid)
    assert session.driver.controls_for(sid), "the client never saw the must-refetch"


class PgSession(Session):
    """A Session whose source is a PostgresElectric: the oracle is the table itself."""

    COLUMNS = {"id": ITEMS["id"], "title": ITEMS["title"]}

    def __init__(self, driver: NodeDriver, dsn: str, source: Any, url: str) -> None:  # noqa: F811
        super().__init__(driver, source, url)
        self.dsn = dsn

    def expected(self, sid: str) -> dict:
        return {f'"public"."items"/"{i}"': {"id": str(i), "title": title}
                for i, title in sql(self.dsn, "SELECT id, title FROM items")}

    def columns(self, table: str) -> Any:
        return self.COLUMNS


@pytest.fixture
def pg_session(driver: NodeDriver, pg_dsn: str) -> Iterator[PgSession]:  # noqa: F811
    from replica.testing import serve_in_thread
    from replica.testing.postgres.server import PostgresElectric

    sql(pg_dsn, "CREATE TABLE items (id int4 PRIMARY KEY, title text)")
    sql(pg_dsn, "INSERT INTO items SELECT i, 'row ' || i FROM generate_series(1, 5) i")
    with PostgresElectric(pg_dsn, long_poll_timeout=1.0, **SSE) as source, serve_in_thread(source) as server:
        session = PgSession(driver, pg_dsn, source, server.url)
        try:
            yield session
        finally:
            session.close()


@pytest.mark.postgres
def test_live_sse_from_the_postgres_dev_server(pg_session: PgSession) -> None:
    sid = pg_session.subscribe(live_sse=True)
    pg_session.wait_synced(sid)
    sql(pg_session.dsn, "INSERT INTO items VALUES (10, 'from postgres')")
    pg_session.wait_synced(sid)
    sql(pg_session.dsn, "UPDATE items SET title = 'changed' WHERE id = 1")  # one change per transaction: see
    sql(pg_session.dsn, "DELETE FROM items WHERE id = 2")  # test_a_multi_op_transaction_makes_the_official_client_…
    pg_session.wait_synced(sid)
    time.sleep(SSE["sse_timeout"] + 0.5)
    sql(pg_session.dsn, "INSERT INTO items VALUES (11, 'after the reconnect')")
    pg_session.wait_synced(sid)
    assert len(sse_answers(pg_session, sid)) >= 2
