"""Subquery shapes cross-checked with a client nobody here wrote: the official TypeScript client
(``@electric-sql/client``'s ``ShapeStream`` and ``Shape``, driven by ``scripts/node/shape_driver.mjs``)
follows the same shapes as replica, from the fake and from the Postgres dev server.

* The messages its ``ShapeStream`` delivered (changes with tags and ``removed_tags``, move-in rows,
  ``move-out``/``move-in`` events, snapshot-ends) equal, in order, those in the responses replica
  received and committed (recorded at its transport); replica's table equals the oracle each time.
* Its ``Shape`` ignores move events (client 1.5.x), so its rows are not the oracle's: they are the
  oracle's rows plus exactly the rows replica deleted because of a move-out and that did not come
  back, with the values they had when they went stale. That is asserted instead.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from oracle import local
from pg import sql, wait_for
from test_official_client import NodeDriver, _peer_or_skip
from test_subquery_postgres import MINE, MIXED, SCHEMA, STEPS, answer

from replica import Applied, Backoff, Replica, Shape
from replica.protocol import wire
from replica.testing import FakeElectric, serve_in_thread
from replica.testing.fake.service import ShapeService

pytestmark = [pytest.mark.node, pytest.mark.integration]

SHAPES = {"mine": MINE, "mixed": MIXED}
INT4, KEY = {"type": "int4"}, {"type": "int4", "pk_index": 0, "not_null": True}
TABLES = {"projects": {"id": KEY, "archived": {"type": "bool", "not_null": True}},
          "memberships": {"id": KEY, "user_id": INT4, "project_id": INT4},
          "issues": {"id": KEY, "project_id": INT4, "title": {"type": "text"}, "owner": INT4}}


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


class Source:
    """One dev server with the scenario's tables: its edits and its oracle."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.dsn = ""
        self.service: ShapeService
        if kind == "postgres":
            self.dsn = request.getfixturevalue("pg_dsn")
            sql(self.dsn, SCHEMA)
            from replica.testing.postgres.server import PostgresElectric

            self.service = PostgresElectric(self.dsn, long_poll_timeout=1.0)
            return
        fake = FakeElectric(long_poll_timeout=1.0)
        for table, spec in TABLES.items():
            fake.create_table(table, spec, rows=[])
        with fake.transaction() as tx:  # SCHEMA's rows
            for i in range(1, 7):
                tx.insert("projects", {"id": str(i), "archived": "t" if i % 5 == 0 else "f"})
            for row in ((1, 1, 1), (2, 1, 2), (3, 2, 2), (4, 3, 5)):
                tx.insert("memberships", dict(zip(("id", "user_id", "project_id"), map(str, row), strict=True)))
            for i in range(1, 31):
                tx.insert("issues", {"id": str(i), "project_id": str(1 + i % 6), "title": f"issue {i}",
                                     "owner": str(i % 3)})
        self.service = fake

    def step(self, statement: str, edits: list[tuple[Any, ...]]) -> None:
        if self.kind == "postgres":
            sql(self.dsn, f"BEGIN; {statement}; COMMIT")
            return
        assert isinstance(self.service, FakeElectric)
        with self.service.transaction() as tx:
            for op, table, *rows in edits:
                getattr(tx, op)(table, *({c: str(v) for c, v in row.items()} for row in rows))

    def oracle(self, where: str) -> dict[str, dict[str, str | None]]:
        """Message key → row, values as text."""
        if isinstance(self.service, FakeElectric):
            return self.service.rows("issues", where, {"1": "1"})
        return {wire.build_key("public", "issues", [str(k[0])]): {c: None if v is None else str(v) for c, v in row.items()}
                for k, row in answer(self.dsn, where, "1").items()}

    def close(self) -> None:
        close = getattr(self.service, "close", None)
        if close is not None:
            close()


def recording(service: ShapeService, seen: dict[str, list[dict[str, Any]]]) -> httpx.MockTransport:
    """A transport to ``service`` that keeps, per ``where``, the messages of every 200 answer."""
    async def handler(request: httpx.Request) -> httpx.Response:
        response = await service.handler(request)
        if response.status_code == 200 and response.headers.get("content-type", "").startswith("application/json"):
            where = request.url.params.get("where", "")
            seen.setdefault(where, []).extend(json.loads(response.content))
        return response

    return httpx.MockTransport(handler)


def without_up_to_date(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("headers", {}).get("control") != wire.UP_TO_DATE]


def shape_rows(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What a client that ignores move events holds (the official ``Shape``'s rules in full mode)."""
    rows: dict[str, dict[str, Any]] = {}
    for m in messages:
        operation = m.get("headers", {}).get("operation")
        if operation == "insert":
            rows[m["key"]] = dict(m["value"])
        elif operation == "update":
            rows[m["key"]] = {**rows.get(m["key"], {}), **m["value"]}
        elif operation == "delete":
            rows.pop(m["key"], None)
    return rows


@pytest.mark.parametrize("kind", ["fake", "postgres"])
def test_the_official_client_receives_what_replica_applied(kind: str, tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    _peer_or_skip()
    if kind == "postgres":
        pytest.importorskip("psycopg")
    source = Source(kind, request)
    seen: dict[str, list[dict[str, Any]]] = {}
    applied: dict[str, list[Applied]] = {}
    db = tmp_path / "x.db"
    shapes = [Shape("issues", where=where, params={"1": "1"}, name=name) for name, where in SHAPES.items()]
    node = NodeDriver()
    try:
        with serve_in_thread(source.service) as server, \
                Replica(db, "http://dev/v1/shape", shapes, transport=recording(source.service, seen),
                        on_commit=lambda a: applied.setdefault(a.name, []).append(a)) as replica:
            for name, where in SHAPES.items():
                node.subscribe(name, server.url, {"table": "issues", "where": where, "params": {"1": "1"}},
                               messages=True)
            assert replica.wait_until_synced(30), replica.status()

            def agreed() -> bool:
                return all(local_keys(db, name) == set(source.oracle(where))
                           and without_up_to_date(node.messages_for(name)) == without_up_to_date(seen.get(where, []))
                           for name, where in SHAPES.items())

            check: Callable[[], bool] = agreed
            wait_for(check, 30, "the initial snapshots")
            for statement, edits in STEPS:
                source.step(statement, edits)
                time.sleep(0.05)
                wait_for(check, 30, f"agreement after {statement!r}")
            for name in SHAPES:
                node.send(cmd="rows", id=name)
            wait_for(lambda: all((node.rows_event(n) or {}).get("reason") == "query" for n in SHAPES), 10, "rows")
            assert not node.problems_for(None), node.problems
            for name, where in SHAPES.items():
                messages = without_up_to_date(seen[where])
                assert any("event" in m["headers"] for m in messages), "no moves: the cross-check tests little"
                oracle = source.oracle(where)
                ts_rows = node.rows_event(name)
                assert ts_rows is not None
                ts = ts_rows["rows"]
                assert ts == shape_rows(messages), "the official Shape does not follow its own rules"
                deleted = Counter(k for a in applied[name] for k in a.keys.get(wire.DELETE, ()))
                told = Counter(m["key"] for m in messages if m["headers"].get("operation") == wire.DELETE)
                moved_out = set(deleted - told)
                stale = set(ts) - set(oracle)
                assert stale == moved_out - set(oracle), (name, stale, moved_out)
                assert {k: v for k, v in ts.items() if k in oracle} == oracle, name
                assert stale, f"{name}: no stale rows: the move-outs were not exercised"
    finally:
        node.close()
        source.close()


def local_keys(db: Path, name: str) -> set[str]:
    return {wire.build_key("public", "issues", [str(key[0])]) for key in local(db, name, ("id",))}
