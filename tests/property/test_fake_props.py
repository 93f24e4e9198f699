"""Property: a simple dict client following FakeElectric's log always equals the oracle.

For any table edits (inserts, partial updates, deletes, PK changes, multi-op transactions,
rotations) interleaved with polls, and any chunk size, a client that follows the protocol
(non-live until up-to-date, then live; adopt electric-offset/handle; on 409 clear and restart)
holds exactly ``fake.rows(...)`` at every up-to-date.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.testing import FakeElectric

COLUMNS = {
    "id": {"type": "int4", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "done": {"type": "bool"},
    "n": {"type": "int4"},
}
SHAPES: list[dict[str, Any]] = [
    {},
    {"where": "n >= $1 OR title = 'a'", "params": ["5"]},
    {"replica": "full"},
    {"columns": ["id", "title"]},
    {"where": "done AND id <> $1", "params": ["3"], "replica": "full", "columns": ["id", "done", "n"]},
]


class DictClient:
    """The client-development guide's Map client, on top of fake.respond."""

    def __init__(self, fake: FakeElectric, shape: dict[str, Any]) -> None:
        self.fake = fake
        self.query: dict[str, str] = {"table": "items"}
        if "where" in shape:
            self.query["where"] = shape["where"]
        for number, value in enumerate(shape.get("params", []), start=1):
            self.query[f"params[{number}]"] = value
        if "columns" in shape:
            self.query["columns"] = ",".join(f'"{c}"' for c in shape["columns"])
        if "replica" in shape:
            self.query["replica"] = shape["replica"]
        self.rows: dict[str, dict[str, str | None]] = {}
        self.reset(None)
        self.up_to_date_count = 0

    def reset(self, handle: str | None) -> None:
        self.rows.clear()
        self.staged: list[dict[str, Any]] = []
        self.handle, self.offset, self.live, self.cursor = handle, "-1", False, ""
        self.schema: dict[str, Any] | None = None
        self.last_position: tuple[int, int] | None = None
        self.open_lsn: str | None = None  # a transaction whose "last" op has not arrived yet
        self.closed_lsn: str | None = None  # the transaction whose "last" op arrived

    def poll(self) -> bool:
        """One request; True when it ended with up-to-date."""
        params = {**self.query, "offset": self.offset}
        if self.handle is not None and self.offset != "-1":
            params["handle"] = self.handle
        if self.live:
            params.update(live="true", cursor=self.cursor)
        response = self.fake.respond("GET", "/v1/shape?" + urlencode(params))
        if response.status == 409:
            assert response.body == b'[{"headers":{"control":"must-refetch"}}]'
            self.reset(response.headers.get("electric-handle"))
            return False
        assert response.status == 200, response.body
        headers = response.headers
        self.handle, self.offset = headers["electric-handle"], headers["electric-offset"]
        if self.live:
            assert "electric-schema" not in headers
            assert int(headers["electric-cursor"]) > int(self.cursor or 0)
            self.cursor = headers["electric-cursor"]
        else:
            self.schema = self.schema or json.loads(headers["electric-schema"])
        body = response.json()
        up_to_date = bool(body) and body[-1]["headers"].get("control") == "up-to-date"
        assert up_to_date == ("electric-up-to-date" in headers)
        for message in body:
            if "key" in message:
                self.check_position(message["headers"])
                self.staged.append(message)
        if up_to_date:
            assert self.open_lsn is None, "up-to-date inside a transaction"
            for message in self.staged:
                self.apply(message)
            self.staged.clear()
            self.live = True
            self.up_to_date_count += 1
        return up_to_date

    def check_position(self, headers: dict[str, Any]) -> None:
        if "lsn" not in headers:
            assert set(headers) == {"operation", "relation"}  # a snapshot row
            return
        position = (int(headers["lsn"]), headers["op_position"])
        assert self.last_position is None or position > self.last_position
        assert self.open_lsn in (None, headers["lsn"]), "a transaction ended without last: true"
        assert headers["lsn"] != self.closed_lsn, "an op after the transaction's last one"
        self.last_position = position
        self.open_lsn = None if headers.get("last") else headers["lsn"]
        self.closed_lsn = headers["lsn"] if headers.get("last") else None

    def apply(self, message: dict[str, Any]) -> None:
        value = {column: self.decode(column, text) for column, text in message["value"].items()}
        operation = message["headers"]["operation"]
        if operation == "insert":
            self.rows[message["key"]] = value
        elif operation == "update":
            self.rows[message["key"]].update(value)
        else:
            del self.rows[message["key"]]

    def decode(self, column: str, text: str | None) -> str | None:
        # Live rows carry bools as t/f, snapshot rows (and the oracle) as true/false.
        assert self.schema is not None
        if text is not None and self.schema[column]["type"] == "bool" and not self.schema[column].get("dims"):
            return {"t": "true", "f": "false"}.get(text, text)
        return text

    def sync(self) -> None:
        for _ in range(10_000):
            if self.poll():
                return
        raise AssertionError("never up to date")


ids = st.integers(0, 7).map(str)
values = st.fixed_dictionaries(
    {},
    optional={
        "title": st.sampled_from([None, "a", "b", "", "x/y", 'q"', "ü"]),
        "done": st.sampled_from([None, "t", "f", "true", "false"]),
        "n": st.one_of(st.none(), st.integers(0, 9).map(str)),
    },
)
edit = st.one_of(
    st.tuples(st.just("insert"), ids, values),
    st.tuples(st.just("update"), ids, values),
    st.tuples(st.just("delete"), ids, st.just({})),
    st.tuples(st.just("pk"), ids, ids),
)
step = st.one_of(
    edit,
    st.tuples(st.just("tx"), st.lists(edit, min_size=1, max_size=4), st.just(None)),
    st.tuples(st.just("poll"), st.integers(1, 5), st.just(None)),
    st.tuples(st.just("rotate"), st.just(None), st.just(None)),
)


def run_edit(tx: Any, existing: set[str], op: str, row_id: str, arg: Any) -> None:
    if op in ("insert", "update") and row_id not in existing:
        tx.insert("items", {"id": row_id, **arg})
        existing.add(row_id)
    elif op in ("insert", "update"):
        tx.update("items", {"id": row_id, **arg})
    elif op == "delete" and row_id in existing:
        tx.delete("items", {"id": row_id})
        existing.discard(row_id)
    elif op == "pk" and row_id in existing and arg not in existing:
        tx.update("items", {"id": row_id}, new={"id": arg})
        existing.discard(row_id)
        existing.add(arg)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(s) or "plain")
@given(
    initial=st.lists(st.tuples(ids, values), max_size=6, unique_by=lambda t: t[0]),
    steps=st.lists(step, max_size=25),
    chunk_bytes=st.one_of(st.integers(1, 400), st.just(10 * 1024 * 1024)),
)
def test_follower_matches_oracle(
    shape: dict[str, Any], initial: list[tuple[str, dict[str, Any]]], steps: list[Any], chunk_bytes: int
) -> None:
    fake = FakeElectric(chunk_bytes=chunk_bytes)
    fake.create_table("items", COLUMNS, [{"id": row_id, **row} for row_id, row in initial])
    oracle_args = {k: shape.get(k) for k in ("where", "params", "columns")}
    existing = {row_id for row_id, _ in initial}
    client = DictClient(fake, shape)
    client.sync()  # the shape exists before the edits, so they go through its log
    for op, a, b in steps:
        if op == "poll":
            for _ in range(a):
                if client.poll():
                    assert client.rows == fake.rows("items", **oracle_args)
        elif op == "rotate":
            fake.rotate("items")
        elif op == "tx":
            with fake.transaction() as tx:
                for inner in a:
                    run_edit(tx, existing, *inner)
        else:
            with fake.transaction() as tx:
                run_edit(tx, existing, op, a, b)
    client.sync()
    assert client.rows == fake.rows("items", **oracle_args)
    late = DictClient(fake, shape)  # joins now: everything comes from a (possibly new) snapshot
    late.sync()
    assert late.rows == client.rows
    # once up to date, a live poll with nothing new returns at once with the same offset
    offset = client.offset
    assert client.poll() and client.offset == offset
