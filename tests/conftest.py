"""Shared fixtures. Keep this file small: one fixture per concept, documented."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pg
import pytest
from hypothesis import settings

from replica.testing import FakeElectric, Server, serve_in_thread
from replica.testing.postgres.cluster import PgCluster

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

ITEMS_COLUMNS = {
    "id": {"type": "int4", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "done": {"type": "bool"},
    "tags": {"type": "text", "dims": 1},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> FakeElectric:
    """A FakeElectric (2 s long-poll) with ``public.items`` (id int4 pk, title, done bool, tags text[])
    holding rows 1 and 2."""
    fake = FakeElectric(long_poll_timeout=2.0)
    fake.create_table(
        "items",
        ITEMS_COLUMNS,
        rows=[
            {"id": "1", "title": "a", "done": "f", "tags": "{x,y}"},
            {"id": "2", "title": "b", "done": "true", "tags": None},
        ],
    )
    return fake


@pytest.fixture
def server(fake: FakeElectric) -> Iterator[Server]:
    """``fake`` on a real loopback port, served from a background thread (usable from sync tests,
    async tests and subprocesses alike)."""
    with serve_in_thread(fake) as running:
        yield running


# --- Postgres (tests/pg.py): one throwaway cluster per session, one database per test ---


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A Postgres cluster (wal_level=logical) on a free 127.0.0.1 port, removed at the end.
    Skips locally without Postgres binaries; fails in CI."""
    bindir = pg.require_postgres()
    cluster = PgCluster.start(bindir)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> str:
    """The DSN of a new, empty database in the session's cluster."""
    return pg.new_database(pg_cluster)


@pytest.fixture
def bulk_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """Spy on ``fast.write_inserts``: per call, (its answer, how many parts converted ahead were attached)."""
    from replica import fast

    calls: list[tuple[bool, int]] = []
    real = fast.write_inserts

    def write_inserts(conn: Any, changes: Any, *args: Any, **kwargs: Any) -> bool:
        attached = kwargs.get("attached")
        calls.append((real(conn, changes, *args, **kwargs), len(attached.names) if attached else 0))
        return calls[-1][0]

    monkeypatch.setattr(fast, "write_inserts", write_inserts)
    return calls
