"""Local writes to a writable shape's view (design.md §3j): the triggers, the outbox, confirm and reject.

The app's side is the stdlib ``sqlite3`` and SQLAlchemy, never open at the same time as the store's apsw
connection in this process (two SQLite copies in one process must not overlap: design.md §9).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from replica.errors import ConfigError
from replica.protocol import Checkpoint, Commit, Shape
from replica.protocol.messages import Change
from replica.protocol.wire import build_key
from replica.protocol.writes import Batch
from replica.store import outbox
from replica.store.store import Store

ITEMS = Shape("items", writable=True)
SHAPES = {"items": ITEMS}
SCHEMA: dict[str, Any] = {
    "id": {"type": "int4", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "n": {"type": "int8"},
    "f": {"type": "float8"},
    "price": {"type": "numeric"},
    "ok": {"type": "bool"},
    "b": {"type": "bytea"},
    "doc": {"type": "jsonb"},
    "tags": {"type": "text", "dims": 1},
    "at": {"type": "timestamptz"},
    "u": {"type": "uuid"},
}
FULL: dict[str, str | None] = {"title": "one", "n": "9007199254740993", "f": "-Infinity", "price": "12.50", "ok": "t", "b": "\\x00ff",
        "doc": '{"a": [1, 2]}', "tags": '{x,"y z",NULL}', "at": "2024-01-02 03:04:05.123456+00",
        "u": "0c5b2444-6a5e-4b3c-9f0e-2d4d5a4b4b4b"}


class Server:
    """Publishes commits to a writable shape through a Store opened for each, as a syncer would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def publish(self, *changes: Change, refetch: bool = False, lsn: int | None = None) -> None:
        self.offset += 1
        checkpoint = Checkpoint("h1", f"{self.offset}_0", None, SCHEMA, True)
        with Store(self.path) as store:
            store.apply(Commit(ITEMS, changes, checkpoint, True, refetch, complete=lsn))

    def writes(self, work: Any) -> Any:
        with Store(self.path) as store:
            return store.local_writes("test", work)


def change(op: str, id: int, *, txid: int | None = None, lsn: int | None = None, **cols: str | None) -> Change:
    headers: dict[str, Any] = {"operation": op}
    if txid is not None:
        headers["txids"] = [txid]
    if lsn is not None:
        headers["lsn"] = str(lsn)
    return Change(op, build_key("public", "items", [str(id)]), {"id": str(id), **cols}, headers)


@pytest.fixture
def server(tmp_path: Path) -> Server:
    s = Server(tmp_path / "app.db")
    first = Change("insert", build_key("public", "items", ["1"]), {"id": "1", **FULL}, {"operation": "insert"})
    s.publish(first, change("insert", 2, title="two", n="2"), refetch=True)
    return s


@pytest.fixture
def app(server: Server) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(server.path, isolation_level=None)) as db:
        yield db


def view(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return db.execute("SELECT * FROM items ORDER BY id").fetchall()


def outbox_rows(db: sqlite3.Connection) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(op, json.loads(k), json.loads(v)) for op, k, v in
            db.execute('SELECT "operation", "key", "value" FROM "_replica_outbox" ORDER BY "seq"')]


def test_the_table_is_a_view_over_the_synced_rows(app: sqlite3.Connection) -> None:
    kinds = dict(app.execute("SELECT name, type FROM sqlite_master WHERE name IN "
                             "('items', '_replica_synced_items', '_replica_pending_items')"))
    assert kinds == {"items": "view", "_replica_synced_items": "table", "_replica_pending_items": "table"}
    assert [r[0] for r in view(app)] == [1, 2]
    assert view(app)[0][1:4] == ("one", 9007199254740993, -math.inf)


def test_read_your_writes_with_stdlib_sqlite3(app: sqlite3.Connection) -> None:
    app.execute("BEGIN")
    app.execute("INSERT INTO items (id, title) VALUES (3, 'three')")
    app.execute("UPDATE items SET title = 'TWO', n = NULL WHERE id = 2")
    app.execute("DELETE FROM items WHERE id = 1")
    assert [r[:3] for r in view(app)] == [(2, "TWO", None), (3, "three", None)]  # in the same transaction
    app.execute("COMMIT")
    assert [r[:3] for r in view(app)] == [(2, "TWO", None), (3, "three", None)]
    nulls = dict.fromkeys(SCHEMA, None)
    assert outbox_rows(app) == [
        ("insert", {"id": 3}, {**nulls, "id": 3, "title": "three"}),
        ("update", {"id": 2}, {"id": 2, "title": "TWO", "n": None}),  # the key and what changed, NULL too
        ("delete", {"id": 1}, {}),
    ]
    assert app.execute("SELECT count(*) FROM _replica_synced_items").fetchone() == (2,)  # synced rows untouched


def test_a_rolled_back_transaction_leaves_nothing(app: sqlite3.Connection) -> None:
    app.execute("BEGIN")
    app.execute("INSERT INTO items (id) VALUES (3)")
    app.execute("ROLLBACK")
    assert [r[0] for r in view(app)] == [1, 2]
    assert outbox_rows(app) == []


def test_every_type_of_the_type_map_round_trips(app: sqlite3.Connection) -> None:
    synced = view(app)[0]
    app.execute(f"INSERT INTO items VALUES ({', '.join('?' for _ in SCHEMA)})", (7, *synced[1:]))
    assert view(app)[2] == (7, *synced[1:])
    value = outbox_rows(app)[0][2]
    assert value == {"id": 7, "title": "one", "n": 9007199254740993, "f": "-Infinity", "price": "12.50", "ok": 1,
                     "b": "\\x00ff", "doc": '{"a": [1, 2]}', "tags": '["x","y z",null]',
                     "at": synced[9], "u": "0c5b2444-6a5e-4b3c-9f0e-2d4d5a4b4b4b"}
    app.execute("UPDATE items SET f = ?, b = ? WHERE id = 7", (math.inf, b"\x01\x02"))
    assert outbox_rows(app)[1][2] == {"id": 7, "f": "Infinity", "b": "\\x0102"}


def test_values_are_stored_with_the_columns_affinity(app: sqlite3.Connection) -> None:
    app.execute("INSERT INTO items (id, n) VALUES ('5', '6')")
    assert view(app)[2][:3] == (5, None, 6)
    assert outbox_rows(app) == [("insert", {"id": 5}, {**dict.fromkeys(SCHEMA, None), "id": 5, "n": 6})]
    app.execute("UPDATE items SET n = '6' WHERE id = 5")  # the same value once stored: no change to send
    assert len(outbox_rows(app)) == 1


def test_a_key_change_is_a_delete_and_an_insert(app: sqlite3.Connection) -> None:
    app.execute("UPDATE items SET id = 20, title = 'moved' WHERE id = 2")
    assert [r[:2] for r in view(app)] == [(1, "one"), (20, "moved")]
    ops = outbox_rows(app)
    assert [(op, key) for op, key, _v in ops] == [("delete", {"id": 2}), ("insert", {"id": 20})]
    assert ops[1][2]["title"] == "moved" and ops[1][2]["n"] == 2  # the whole row, moved


def test_constraints_a_table_would_enforce(app: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed: items.id"):
        app.execute("INSERT INTO items (id) VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL constraint failed: items.id"):
        app.execute("INSERT INTO items (title) VALUES ('no key')")
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        app.execute("UPDATE items SET id = 1 WHERE id = 2")
    assert outbox_rows(app) == []


def test_multi_row_statements_write_one_change_per_row(app: sqlite3.Connection) -> None:
    app.executemany("INSERT INTO items (id, n) VALUES (?, ?)", [(3, 3), (4, 4)])
    app.execute("UPDATE items SET n = n * 10 WHERE id >= 2")
    app.execute("DELETE FROM items WHERE n BETWEEN 25 AND 100")
    assert [(r[0], r[2]) for r in view(app)] == [(1, 9007199254740993), (2, 20)]
    assert [(op, k["id"]) for op, k, _v in outbox_rows(app)] == [
        ("insert", 3), ("insert", 4), ("update", 2), ("update", 3), ("update", 4), ("delete", 3), ("delete", 4)]


def test_sqlalchemy_reads_and_writes_the_view(server: Server) -> None:
    engine = sa.create_engine(f"sqlite:///{server.path}")
    try:
        items = sa.Table("items", sa.MetaData(), autoload_with=engine)
        assert [c.name for c in items.columns] == list(SCHEMA)
        with engine.begin() as conn:
            conn.execute(sa.insert(items), [{"id": 3, "title": "three", "ok": True}, {"id": 4, "title": None, "ok": None}])
            conn.execute(sa.update(items).where(items.c.id == 1).values(title=None, price="13.00"))
            conn.execute(sa.delete(items).where(items.c.id == 2))
        with engine.connect() as conn:
            got = conn.execute(sa.select(items.c.id, items.c.title, items.c.ok).order_by(items.c.id)).all()
        assert [tuple(r) for r in got] == [(1, None, 1), (3, "three", 1), (4, None, None)]
    finally:
        engine.dispose()
    with closing(sqlite3.connect(server.path)) as db:
        assert [(op, k["id"]) for op, k, _v in outbox_rows(db)] == [
            ("insert", 3), ("insert", 4), ("update", 1), ("delete", 2)]
        assert outbox_rows(db)[2][2] == {"id": 1, "title": None, "price": "13.00"}


# --- the writer's side: batches, confirmation, rejection ---


def app_writes(server: Server, *statements: str) -> None:
    with closing(sqlite3.connect(server.path, isolation_level=None)) as db:
        for sql in statements:
            db.execute(sql)


def read(server: Server, sql: str = "SELECT id, title, n FROM items ORDER BY id") -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(server.path)) as db:
        return db.execute(sql).fetchall()


def test_a_batch_keeps_its_name_until_accepted(server: Server) -> None:
    app_writes(server, "UPDATE items SET title = 'a' WHERE id = 1", "UPDATE items SET title = 'b' WHERE id = 2")
    first = server.writes(lambda c: outbox.next_batch(c, "b1"))
    again = server.writes(lambda c: outbox.next_batch(c, "b2"))  # a retry, a restart: the same batch
    assert isinstance(first, Batch) and first == again and first.batch_id == "b1" and len(first.changes) == 2
    app_writes(server, "UPDATE items SET title = 'c' WHERE id = 1")
    assert server.writes(lambda c: outbox.next_batch(c, "b3")) == first  # later writes wait for the next batch
    server.writes(lambda c: outbox.accepted(c, "b1", 700, time.time(), SHAPES))
    nxt = server.writes(lambda c: outbox.next_batch(c, "b4"))
    assert nxt is not None and nxt.batch_id == "b4" and [ch.value["title"] for ch in nxt.changes] == ["c"]
    assert server.writes(lambda c: outbox.next_batch(c, "b5")) == nxt
    server.writes(lambda c: outbox.accepted(c, "b4", 701, time.time(), SHAPES))
    assert server.writes(lambda c: outbox.next_batch(c, "b6")) is None


def test_accepted_changes_stay_until_the_publish_with_their_txid_removes_them(server: Server) -> None:
    app_writes(server, "UPDATE items SET title = 'mine' WHERE id = 2")
    server.writes(lambda c: outbox.next_batch(c, "b1"))
    server.writes(lambda c: outbox.accepted(c, "b1", 900, time.time(), SHAPES))
    server.publish(change("update", 2, txid=899, lsn=10, n="22"))  # someone else's change to the row
    assert read(server) == [(1, "one", 9007199254740993), (2, "mine", 22)]  # local title over the server's row
    server.publish(change("update", 2, txid=900, lsn=11, title="mine"))
    assert read(server) == [(1, "one", 9007199254740993), (2, "mine", 22)]
    assert read(server, "SELECT count(*) FROM _replica_outbox") == [(0,)]
    assert read(server, "SELECT count(*) FROM _replica_pending_items") == [(0,)]


def test_a_confirmation_by_lsn_covers_a_change_the_shape_never_carried(server: Server) -> None:
    app_writes(server, "UPDATE items SET title = 'gone soon' WHERE id = 2")
    server.writes(lambda c: outbox.next_batch(c, "b1"))
    server.writes(lambda c: outbox.accepted(c, "b1", 900, time.time(), SHAPES))
    server.publish(change("delete", 2, txid=900, lsn=10), lsn=10)
    assert read(server) == [(1, "one", 9007199254740993)]
    assert read(server, "SELECT count(*) FROM _replica_outbox") == [(0,)]


def test_a_rejected_batch_rolls_back_alone(server: Server) -> None:
    app_writes(server, "UPDATE items SET title = 'first' WHERE id = 2", "INSERT INTO items (id) VALUES (5)")
    server.writes(lambda c: outbox.next_batch(c, "b1"))
    app_writes(server, "UPDATE items SET n = 99 WHERE id = 2")  # a later change to the same row
    assert read(server) == [(1, "one", 9007199254740993), (2, "first", 99), (5, None, None)]
    removed = server.writes(lambda c: outbox.reject(c, "b1", {"items": ITEMS}))
    assert removed == 2
    assert read(server) == [(1, "one", 9007199254740993), (2, "two", 99)]  # the later change stays, alone
    assert [op for op, _k, _v in outbox_rows_of(server)] == ["update"]


def outbox_rows_of(server: Server) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    with closing(sqlite3.connect(server.path)) as db:
        return outbox_rows(db)


def test_a_delete_on_the_server_hides_a_pending_update(server: Server) -> None:
    app_writes(server, "UPDATE items SET title = 'x' WHERE id = 2")
    server.publish(change("delete", 2, txid=5, lsn=3))
    assert read(server) == [(1, "one", 9007199254740993)]  # the server will update no row either


def test_a_refetch_keeps_the_view_and_the_pending_changes(server: Server) -> None:
    app_writes(server, "INSERT INTO items (id, title) VALUES (3, 'local')")
    server.publish(change("insert", 1, title="new one"), refetch=True)
    assert read(server) == [(1, "new one", None), (3, "local", None)]


def test_turning_writable_off_makes_a_plain_table_again(server: Server) -> None:
    app_writes(server, "INSERT INTO items (id, title) VALUES (3, 'local')")
    plain = Shape("items")
    with Store(server.path) as store:
        store.apply(Commit(plain, (change("insert", 1, title="plain"),),
                           Checkpoint("h2", "0_0", None, SCHEMA, True), True, True))
    assert read(server, "SELECT type FROM sqlite_master WHERE name = 'items'") == [("table",)]
    assert read(server) == [(1, "plain", None)]
    assert read(server, "SELECT count(*) FROM _replica_outbox") == [(0,)]


def test_a_writable_shape_needs_a_key(tmp_path: Path) -> None:
    with Store(tmp_path / "k.db") as store, pytest.raises(Exception, match="no primary key"):
        store.apply(Commit(ITEMS, (Change("insert", "k", {"a": "1"}, {"operation": "insert"}),),
                           Checkpoint("h", "0_0", None, {"a": {"type": "int4"}}, True), True, True))


def test_writable_is_part_of_the_definition_only_when_on() -> None:
    assert Shape("items").definition() == Shape("items", writable=False).definition()
    assert '"writable":true' in ITEMS.definition()
    with pytest.raises(ConfigError, match="subquery"):
        Shape("items", where="id IN (SELECT id FROM other)", writable=True)


def test_json_of_a_batch(server: Server) -> None:
    app_writes(server, "DELETE FROM items WHERE id = 2")
    batch = server.writes(lambda c: outbox.next_batch(c, "b1"))
    assert batch.to_json() == {"batch_id": "b1",
                               "changes": [{"table": "items", "op": "delete", "key": {"id": 2}, "value": {}}]}


def test_a_transaction_that_changed_nothing_is_confirmed_after_the_grace(server: Server) -> None:
    app_writes(server, "UPDATE items SET title = 'late' WHERE id = 2")
    server.writes(lambda c: outbox.next_batch(c, "b1"))
    server.publish(change("delete", 2, txid=800, lsn=10))  # someone deletes the row: the update will change nothing
    server.writes(lambda c: outbox.accepted(c, "b1", 801, time.time(), SHAPES))
    server.publish(change("update", 1, txid=802, lsn=12, title="x"))
    assert read(server, "SELECT count(*) FROM _replica_outbox") == [(1,)]  # maybe not synced yet: kept
    server.writes(lambda c: outbox.accepted(c, "b1", 801, time.time() - outbox.CONFIRM_GRACE - 1, SHAPES))
    server.publish(change("update", 1, txid=803, lsn=13, title="y"))
    assert read(server, "SELECT count(*) FROM _replica_outbox") == [(0,)]
    assert read(server) == [(1, "y", 9007199254740993)]


def test_a_transaction_published_before_its_upload_answered_is_confirmed_at_once(server: Server) -> None:
    app_writes(server, "UPDATE items SET title = 'quick' WHERE id = 2")
    server.writes(lambda c: outbox.next_batch(c, "b1"))
    server.publish(change("update", 2, txid=900, lsn=10, title="quick"))  # the sync beat the upload's answer
    assert read(server, "SELECT count(*) FROM _replica_outbox") == [(1,)]
    server.writes(lambda c: outbox.accepted(c, "b1", 900, time.time(), SHAPES))
    assert read(server, "SELECT count(*) FROM _replica_outbox") == [(0,)]
    assert read(server, "SELECT count(*) FROM _replica_pending_items") == [(0,)]
    assert read(server) == [(1, "one", 9007199254740993), (2, "quick", 2)]


def test_the_daemon_config_names_writable_shapes_and_the_write_endpoint(tmp_path: Path) -> None:
    from replica.cli.config import parse_config

    raw = {"url": "http://e/v1/shape", "database": "a.db", "shapes": [{"table": "todos", "writable": True}],
           "writes": {"url": "https://api.example/writes", "headers": {"authorization": "Bearer t"}}}
    config = parse_config(raw, base=tmp_path, env={})
    assert config.shapes[0].writable and config.writes_url == "https://api.example/writes"
    assert config.writes_headers["authorization"].value() == "Bearer t"
    assert config.writes_headers["authorization"] in config.sources()  # redacted like every credential
    with pytest.raises(ConfigError, match="writable"):
        parse_config({**raw, "shapes": [{"table": "todos", "writable": "yes"}]}, base=tmp_path, env={})


def test_replica_status_and_the_metrics_show_what_waits_to_upload(server: Server) -> None:
    """`replica status` (and `--json`): pending count, oldest age, the last failure; the daemon's metrics
    the same per shape, read at scrape time."""
    from replica.cli.metrics import Metrics
    from replica.cli.status import read_status, render_table
    from replica.status import ShapeStatus
    from replica.sync.events import SyncEvent

    [row] = read_status(server.path)
    assert (row["writes_pending"], row["oldest_write_age"], row["write_error"]) == (0, None, None)
    app_writes(server, "UPDATE items SET title = 'a' WHERE id = 1", "INSERT INTO items (id) VALUES (7)")
    server.writes(lambda c: outbox.next_batch(c, "b1"))
    server.writes(lambda c: outbox.failed(c, "b1", "HTTP 503 from the write endpoint"))
    [row] = read_status(server.path)
    assert row["writes_pending"] == 2 and 0 <= row["oldest_write_age"] < 60
    assert row["write_error"] == "HTTP 503 from the write endpoint"
    assert "items: 2 local writes wait to upload" in render_table([row]) and "HTTP 503" in render_table([row])

    metrics = Metrics(server.path, lambda: [ShapeStatus("items", "live")], lambda: True)
    metrics.observe(SyncEvent("write_rejected", "items", error="CHECK constraint"))
    text = metrics.render().decode()
    assert 'replica_writes_rejected_total{shape="items"} 1.0' in text
    assert 'replica_writes_pending{shape="items"} 2.0' in text and 'replica_oldest_write_seconds{shape="items"}' in text
