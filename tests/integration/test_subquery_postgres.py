"""Subquery shapes from real Postgres through the dev server (``testing/postgres/subquery.py``).

* The model scenario end to end: one shape per user (``project_id IN (SELECT project_id FROM
  memberships WHERE user_id = $1)``) and a nested/NOT IN/OR one, a seeded writer adding, moving and
  removing memberships and changing issues and projects; after each quiet point every local table
  equals Postgres's own answer to its ``where`` (so neither server grades its own homework).
* Moved-in rows are as the causing transaction left them, even when later transactions changed
  them before the server read the log; the moves sit in that transaction's place.
* The same writes give the same messages from the fake and from Postgres (tags included: the
  same code computes them), and what the server refuses.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from oracle import local
from pg import sql, wait_for
from test_postgres_server import read_log

from replica import Backoff, Replica, Shape
from replica.testing import FakeElectric, serve_in_thread
from replica.testing.fake.subquery import row_tag_value, tag_value
from replica.testing.postgres.server import PostgresElectric

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

SCHEMA = """
CREATE TABLE projects (id int PRIMARY KEY, archived bool NOT NULL DEFAULT false);
CREATE TABLE memberships (id int PRIMARY KEY, user_id int, project_id int);
CREATE TABLE issues (id int PRIMARY KEY, project_id int, title text, owner int);
INSERT INTO projects SELECT i, i % 5 = 0 FROM generate_series(1, 6) i;
INSERT INTO memberships VALUES (1, 1, 1), (2, 1, 2), (3, 2, 2), (4, 3, 5);
INSERT INTO issues SELECT i, 1 + i % 6, 'issue ' || i, i % 3 FROM generate_series(1, 30) i;
"""
MINE = "project_id IN (SELECT project_id FROM memberships WHERE user_id = $1)"
# Nested, NOT IN and a plain condition under OR: the live projects of user 1, or anything user 2 is not in.
MIXED = ("project_id IN (SELECT id FROM projects WHERE NOT archived AND id IN "
         "(SELECT project_id FROM memberships WHERE user_id = $1)) OR "
         "(owner = 2 AND project_id NOT IN (SELECT project_id FROM memberships WHERE user_id = 2))")
# Row-valued: issues whose owner is a member of the issue's project, or user $1's own.
PAIRS = "(project_id, owner) IN (SELECT project_id, user_id FROM memberships WHERE user_id <> $1) OR owner = $1"
SHAPES = {"mine1": (MINE, "1"), "mine2": (MINE, "2"), "mine3": (MINE, "3"), "mixed": (MIXED, "1"),
          "pairs": (PAIRS, "1")}


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


def answer(dsn: str, where: str, param: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Postgres's own answer to the shape: issues rows by id."""
    with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.RawCursor) as conn:
        found = conn.execute(f"SELECT id, project_id, title, owner FROM issues WHERE {where}", [param]).fetchall()
    return {(row[0],): dict(zip(("id", "project_id", "title", "owner"), row, strict=True)) for row in found}


def write(rng: random.Random, dsn: str, next_id: list[int]) -> None:
    """One transaction of one to three random edits."""
    statements = []
    for _ in range(rng.randint(1, 3)):
        pick = rng.random()
        if pick < 0.3:
            next_id[0] += 1
            statements.append(f"INSERT INTO memberships VALUES ({next_id[0]}, {rng.randint(1, 3)}, {rng.randint(1, 6)})")
        elif pick < 0.5:
            statements.append(f"DELETE FROM memberships WHERE id = (SELECT id FROM memberships "
                              f"ORDER BY id OFFSET {rng.randint(0, 3)} LIMIT 1)")
        elif pick < 0.6:
            statements.append(f"UPDATE memberships SET project_id = {rng.randint(1, 6)} WHERE id = "
                              f"(SELECT min(id) FROM memberships WHERE user_id = {rng.randint(1, 3)})")
        elif pick < 0.75:
            statements.append(f"UPDATE issues SET project_id = {rng.randint(1, 6)} WHERE id = {rng.randint(1, 30)}")
        elif pick < 0.85:
            statements.append(f"UPDATE issues SET title = 'edit {rng.randint(0, 99)}', owner = {rng.randint(0, 2)}"
                              f" WHERE id = {rng.randint(1, 30)}")
        elif pick < 0.93:
            statements.append(f"UPDATE projects SET archived = NOT archived WHERE id = {rng.randint(1, 6)}")
        else:
            statements.append(f"DELETE FROM issues WHERE id = {rng.randint(1, 30)}; INSERT INTO issues VALUES "
                              f"({100 + next_id[0]}, {rng.randint(1, 6)}, 'new', {rng.randint(0, 2)})")
            next_id[0] += 1
    sql(dsn, "BEGIN; " + "; ".join(statements) + "; COMMIT")


def test_the_model_scenario_on_postgres(pg_dsn: str, tmp_path: Path) -> None:
    sql(pg_dsn, SCHEMA)
    db = tmp_path / "sub.db"
    shapes = [Shape("issues", where=where, params={"1": param}, name=name) for name, (where, param) in SHAPES.items()]

    def converged() -> bool:
        return all(local(db, name, ("id",)) == answer(pg_dsn, where, param) for name, (where, param) in SHAPES.items())

    rng = random.Random(19)
    next_id = [100]
    with PostgresElectric(pg_dsn, long_poll_timeout=1.0) as source, serve_in_thread(source) as server, \
            Replica(db, server.url, shapes) as replica:
        assert replica.wait_until_synced(30), replica.status()
        wait_for(converged, what="the initial snapshots")
        handles = {s.handle for s in source._db.shapes.values()}
        for round_ in range(24):
            for _ in range(rng.randint(1, 3)):
                write(rng, pg_dsn, next_id)
            if round_ == 12:  # DDL on an inner table: every shape that reads it answers 409 and is fetched again
                sql(pg_dsn, "ALTER TABLE memberships ADD COLUMN role text")
            wait_for(converged, what=f"convergence after round {round_}")
        events = [entry.message["headers"]["event"] for log in source._db.by_handle.values() for entry in log.entries
                  if "event" in entry.message["headers"]]
        refetched = {s.handle for s in source._db.shapes.values()}
    assert {"move-in", "move-out"} <= set(events), "the writer made no moves: the scenario tests nothing"
    assert not refetched & handles and len(refetched) == len(SHAPES), "the DDL did not rotate every shape (no 409)"


def test_moved_in_rows_are_as_their_transaction_left_them(pg_dsn: str) -> None:
    sql(pg_dsn, SCHEMA)
    with PostgresElectric(pg_dsn) as source:
        shape = {"table": "issues", "where": MINE, "params[1]": "3"}
        _, handle, offset = read_log(source, **shape)
        with source.paused():  # both commit before the server reads either from the log
            sql(pg_dsn, "INSERT INTO memberships VALUES (50, 3, 1)")  # issues of project 1 move in
            sql(pg_dsn, "UPDATE issues SET title = 'later' WHERE id = 6")  # one of them, changed afterwards
        messages: list[dict[str, Any]] = []

        def arrived() -> bool:
            nonlocal offset
            more, _, offset = read_log(source, handle, offset, **shape)
            messages.extend(more if len(more) > 1 else [])
            return any(m.get("value", {}).get("title") == "later" for m in messages)

        wait_for(arrived, what="the update of a moved-in row")
    kinds = [m["headers"].get("event") or ("move-in row" if m["headers"].get("is_move_in") else
             m["headers"].get("operation") or m["headers"].get("control")) for m in messages]
    # No row held project 1's slot, so no move-in event: only the rows and their snapshot-end.
    assert kinds == [*["move-in row"] * 5, "snapshot-end", "update", "up-to-date"], kinds
    moved = {m["value"]["id"]: m["value"]["title"] for m in messages if m["headers"].get("is_move_in")}
    assert moved == {str(i): f"issue {i}" for i in (6, 12, 18, 24, 30)}, "a moved-in row is not as its transaction left it"
    lsns = [int(m["headers"]["lsn"]) for m in messages if "lsn" in m["headers"]]
    update = next(m for m in messages if m["headers"].get("operation") == "update")
    assert update["headers"]["tags"] == [tag_value(handle, "1")] and lsns == sorted(lsns)


# Each step: SQL for Postgres and the same edits for the fake, as (op, table, row[, new]) tuples.
STEPS: list[tuple[str, list[tuple[Any, ...]]]] = [
    ("INSERT INTO memberships VALUES (10, 1, 3)", [("insert", "memberships", {"id": 10, "user_id": 1, "project_id": 3})]),
    ("DELETE FROM memberships WHERE id = 1", [("delete", "memberships", {"id": 1})]),
    ("UPDATE issues SET project_id = 3 WHERE id = 2; UPDATE issues SET title = 't' WHERE id = 3",
     [("update", "issues", {"id": 2, "project_id": 3}), ("update", "issues", {"id": 3, "title": "t"})]),
    ("UPDATE memberships SET project_id = 4 WHERE id = 2", [("update", "memberships", {"id": 2, "project_id": 4})]),
    ("UPDATE projects SET archived = true WHERE id = 3", [("update", "projects", {"id": 3, "archived": "t"})]),
    ("INSERT INTO memberships VALUES (11, 2, 6); UPDATE issues SET owner = 2 WHERE id = 6",
     [("insert", "memberships", {"id": 11, "user_id": 2, "project_id": 6}), ("update", "issues", {"id": 6, "owner": 2})]),
    ("DELETE FROM memberships WHERE id = 3", [("delete", "memberships", {"id": 3})]),
    ("UPDATE issues SET id = 99 WHERE id = 1", [("update", "issues", {"id": 1}, {"id": 99})]),
    ("DELETE FROM memberships WHERE id = 11", [("delete", "memberships", {"id": 11})]),  # pairs (6, 2) move out
]


def normalised(messages: list[dict[str, Any]], handle: str) -> list[Any]:
    """Messages without what differs between servers: tag hashes back to values, no lsn/txids/xids."""
    values = {tag_value(handle, str(v)): f"<{v}>" for v in range(0, 200)}
    values |= {row_tag_value(handle, [("project_id", p), ("owner", o)]): f"<{p},{o}>"
               for p in [None, *map(str, range(10))] for o in [None, *map(str, range(4))]}

    def untag(tag: str) -> str:
        return "/".join(values.get(slot, slot) for slot in tag.split("/"))

    out = []
    for message in messages:
        headers = {k: v for k, v in message["headers"].items()
                   if k not in ("lsn", "txids", "op_position", "xmin", "xmax", "xip_list", "global_last_seen_lsn")}
        for name in ("tags", "removed_tags"):
            if name in headers:
                headers[name] = [untag(t) for t in headers[name]]
        if "patterns" in headers:
            headers["patterns"] = [{**p, "value": values.get(p["value"], p["value"])} for p in headers["patterns"]]
        out.append({**message, "headers": headers})
    return out


def test_the_fake_and_postgres_write_the_same_messages(pg_dsn: str) -> None:
    sql(pg_dsn, SCHEMA)
    fake = FakeElectric()
    int4, key = {"type": "int4"}, {"type": "int4", "pk_index": 0, "not_null": True}
    for table, spec in {"projects": {"id": key, "archived": {"type": "bool", "not_null": True}},
                        "memberships": {"id": key, "user_id": int4, "project_id": int4},
                        "issues": {"id": key, "project_id": int4, "title": {"type": "text"}, "owner": int4}}.items():
        columns = list(spec)
        rows = sql(pg_dsn, f"SELECT {', '.join(columns)} FROM {table} ORDER BY id")
        fake.create_table(table, spec, rows=[{c: _text(v) for c, v in zip(columns, row, strict=True)} for row in rows])
    with PostgresElectric(pg_dsn) as source:
        for where in (MINE, MIXED, PAIRS):
            shape = {"table": "issues", "where": where, "params[1]": "1"}
            read_log(source, **shape)
            read_log(fake, **shape)  # type: ignore[arg-type]
        for step, edits in STEPS:
            with psycopg.connect(pg_dsn) as conn:
                conn.execute(step)  # type: ignore[arg-type]
                (before,) = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()  # type: ignore[misc]
            high, low = before.split("/")
            written = int(high, 16) << 32 | int(low, 16)
            wait_for(lambda written=written: source._db.lsn > written, what=step)
            with fake.transaction() as tx:
                for op, table, *rows in edits:
                    getattr(tx, op)(table, *({c: _text(v) for c, v in row.items()} for row in rows))
        for where in (MINE, MIXED, PAIRS):
            shape = {"table": "issues", "where": where, "params[1]": "1"}
            theirs, pg_handle, _ = read_log(source, **shape)
            ours, fake_handle, _ = read_log(fake, **shape)  # type: ignore[arg-type]
            assert any("event" in m["headers"] for m in ours), "no moves: the comparison tests little"
            assert normalised(theirs, pg_handle) == normalised(ours, fake_handle), where


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ("t" if value else "f") if isinstance(value, bool) else str(value)


def test_what_the_server_refuses(pg_dsn: str) -> None:
    sql(pg_dsn, SCHEMA)
    with PostgresElectric(pg_dsn) as source:
        refused = {
            "EXISTS (SELECT 1 FROM memberships)": "subqueries",
            "project_id = (SELECT max(project_id) FROM memberships)": "subqueries",
            "(project_id IN (SELECT project_id FROM memberships)) IS TRUE": "a condition of its own",
            "(id, project_id) IN (SELECT id FROM memberships)": "subquery has too few columns",
            "(id, project_id + 1) IN (SELECT id, project_id FROM memberships)": "a condition of its own",
            "project_id IN (SELECT project_id FROM nowhere)": 'relation "nowhere" does not exist',
            "project_id IN (SELECT project_id FROM memberships m JOIN projects p ON p.id = m.project_id)":
                "subqueries",
        }
        for where, message in refused.items():
            response = source.respond("GET", "/v1/shape?" + urlencode({"table": "issues", "offset": "-1",
                                                                         "where": where}))
            assert response.status == 400, (where, response.body)
            assert message in response.json()["errors"]["where"][0], (where, response.json())


def test_a_change_to_an_inner_table_s_definition_or_a_truncate_expires_the_shape(pg_dsn: str) -> None:
    sql(pg_dsn, SCHEMA)
    with PostgresElectric(pg_dsn) as source:
        shape = {"table": "issues", "where": MINE, "params[1]": "1"}
        for ddl in ("TRUNCATE memberships", "ALTER TABLE memberships ADD COLUMN role text"):
            _, handle, offset = read_log(source, **shape)
            sql(pg_dsn, ddl)

            asked = urlencode({**shape, "handle": handle, "offset": offset})

            def expired(asked: str = asked) -> bool:
                return source.respond("GET", "/v1/shape?" + asked).status == 409

            wait_for(expired, what=f"a 409 after {ddl}")


def urlencode(params: dict[str, str]) -> str:
    from urllib.parse import urlencode as encode

    return encode(params)


def test_the_fake_evaluates_subqueries_as_postgres_does(pg_dsn: str) -> None:
    """Three-valued IN/NOT IN over NULLs, single and row-valued: the fake's oracle against Postgres's."""
    values = [None, "1", "2"]
    pairs = [(a, b) for a in values for b in values]
    sql(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, a int, b int); CREATE TABLE g (id int PRIMARY KEY, x int, y int)")
    for i, (a, b) in enumerate(pairs):
        sql(pg_dsn, "INSERT INTO t VALUES (%s, %s, %s)", [i, a, b])
    grants = [("1", "1"), ("2", None), (None, "2")]
    for i, (x, y) in enumerate(grants):
        sql(pg_dsn, "INSERT INTO g VALUES (%s, %s, %s)", [i, x, y])
    fake = FakeElectric()
    int4, key = {"type": "int4"}, {"type": "int4", "pk_index": 0, "not_null": True}
    fake.create_table("t", {"id": key, "a": int4, "b": int4},
                      rows=[{"id": str(i), "a": a, "b": b} for i, (a, b) in enumerate(pairs)])
    fake.create_table("g", {"id": key, "x": int4, "y": int4},
                      rows=[{"id": str(i), "x": x, "y": y} for i, (x, y) in enumerate(grants)])
    for where in ("(a, b) IN (SELECT x, y FROM g)", "(a, b) NOT IN (SELECT x, y FROM g)",
                  "(a, b) NOT IN (SELECT x, y FROM g WHERE x = 1)", "(a, b) IN (SELECT x, y FROM g WHERE y IS NULL)",
                  "a NOT IN (SELECT x FROM g)", "a NOT IN (SELECT x FROM g WHERE x IS NOT NULL)",
                  "NOT ((b, a) IN (SELECT x, y FROM g) OR a IN (SELECT y FROM g WHERE x = 2))"):
        theirs = {row[0] for row in sql(pg_dsn, f"SELECT id FROM t WHERE {where}")}
        ours = {int(key.rsplit('"', 2)[-2]) for key in fake.rows("t", where, [])}
        assert ours == theirs, where
