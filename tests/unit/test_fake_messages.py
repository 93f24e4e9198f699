"""Change messages as Electric writes them: forms per operation/replica, transactions, keys."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from replica.testing import FakeElectric

ITEMS = {
    "id": {"type": "int4", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "done": {"type": "bool"},
    "n": {"type": "int4"},
    "flags": {"type": "bool", "dims": 1},
}
REL = ["public", "items"]


def key(*pk: str, table: str = "items") -> str:
    return f'"public"."{table}"/' + "/".join(f'"{v}"' for v in pk)


class Follower:
    """Follows one shape through fake.respond and returns each batch of messages."""

    def __init__(self, fake: FakeElectric, table: str = "items", **shape: str) -> None:
        self.fake, self.shape = fake, {"table": table, **shape}
        self.snapshot: list[dict[str, Any]] = []
        response = self._get(offset="-1")
        self.handle = response.headers["electric-handle"]
        self.offset = response.headers["electric-offset"]
        self.snapshot += response.json()
        while "electric-up-to-date" not in response.headers:
            response = self._get(offset=self.offset, handle=self.handle)
            self.offset = response.headers["electric-offset"]
            self.snapshot += response.json()

    def _get(self, **params: str) -> Any:
        response = self.fake.respond("GET", "/v1/shape?" + urlencode({**self.shape, **params}))
        assert response.status == 200, response.body
        return response

    def changes(self) -> list[dict[str, Any]]:
        """Change messages (no controls) of one live request."""
        response = self._get(offset=self.offset, handle=self.handle, live="true")
        self.offset = response.headers["electric-offset"]
        body = response.json()
        assert body[-1]["headers"]["control"] == "up-to-date"
        return [m for m in body if "key" in m]


@pytest.fixture
def fake() -> FakeElectric:
    fake = FakeElectric()
    fake.create_table("items", ITEMS, [{"id": "1", "title": "a", "done": "f", "n": "1", "flags": "{true,f,NULL}"}])
    return fake


def test_insert_message_headers(fake: FakeElectric) -> None:
    follower = Follower(fake)
    assert follower.snapshot[0]["value"] == {"id": "1", "title": "a", "done": "false", "n": "1", "flags": "{t,f,NULL}"}
    lsn = fake.insert("items", {"id": "2", "title": "b", "done": "true", "flags": "{TRUE}"})
    (message,) = follower.changes()
    assert message == {
        "key": key("2"),
        "value": {"id": "2", "title": "b", "done": "t", "n": None, "flags": "{t}"},
        "headers": {"operation": "insert", "relation": REL, "txids": [751], "lsn": str(lsn), "op_position": 0,
                    "last": True},
    }
    assert follower.offset == f"{lsn}_0"


def test_update_default_carries_pk_and_changed_columns(fake: FakeElectric) -> None:
    follower = Follower(fake)
    fake.update("items", {"id": "1", "title": "b", "n": "1"})  # n unchanged
    (message,) = follower.changes()
    assert message["value"] == {"id": "1", "title": "b"}
    assert message["headers"]["operation"] == "update" and "old_value" not in message


def test_update_full_carries_row_and_old_values(fake: FakeElectric) -> None:
    follower = Follower(fake, replica="full")
    fake.update("items", {"id": "1"}, new={"title": "b", "done": "t"})
    fake.delete("items", {"id": "1"})
    update, delete = follower.changes()
    assert update["value"] == {"id": "1", "title": "b", "done": "t", "n": "1", "flags": "{t,f,NULL}"}
    assert update["old_value"] == {"title": "a", "done": "f"}
    assert delete["value"] == update["value"] and delete["headers"]["operation"] == "delete"


def test_delete_default_carries_pk_only(fake: FakeElectric) -> None:
    follower = Follower(fake)
    fake.delete("items", {"id": "1"})
    (message,) = follower.changes()
    assert message["value"] == {"id": "1"} and message["key"] == key("1")


def test_noop_updates_and_unselected_columns_are_dropped(fake: FakeElectric) -> None:
    projected = Follower(fake, columns='"id","title"')
    everything = Follower(fake)
    fake.update("items", {"id": "1", "title": "a"})  # changes nothing
    fake.update("items", {"id": "1", "n": "5"})  # changes a column outside the projection
    assert projected.changes() == []
    assert [m["value"] for m in everything.changes()] == [{"id": "1", "n": "5"}]
    fake.update("items", {"id": "1", "title": "z", "n": "6"})
    assert [m["value"] for m in projected.changes()] == [{"id": "1", "title": "z"}]


def test_pk_change_splits_into_delete_and_insert(fake: FakeElectric) -> None:
    follower = Follower(fake)
    lsn = fake.update("items", {"id": "1"}, new={"id": "9", "title": "moved"})
    delete, insert = follower.changes()
    assert delete == {
        "key": key("1"),
        "value": {"id": "1"},
        "headers": {"operation": "delete", "relation": REL, "key_change_to": key("9"), "txids": [751],
                    "lsn": str(lsn), "op_position": 0},
    }
    assert insert["key"] == key("9")
    assert insert["value"] == {"id": "9", "title": "moved", "done": "f", "n": "1", "flags": "{t,f,NULL}"}
    assert insert["headers"]["key_change_from"] == key("1")
    assert (insert["headers"]["op_position"], insert["headers"]["last"]) == (1, True)
    assert fake.rows("items").keys() == {key("9")}


def test_transaction_shares_lsn_and_txid_with_even_positions(fake: FakeElectric) -> None:
    everything = Follower(fake)
    filtered = Follower(fake, where="id < 5")
    with fake.transaction() as tx:
        tx.insert("items", {"id": "2"})
        tx.update("items", {"id": "2"}, new={"id": "3"})
        tx.insert("items", {"id": "7"})
        tx.delete("items", {"id": "1"})
    messages = everything.changes()
    assert [m["headers"]["op_position"] for m in messages] == [0, 2, 3, 4, 6]
    assert {m["headers"]["lsn"] for m in messages} == {str(tx.lsn)}
    assert {tuple(m["headers"]["txids"]) for m in messages} == {(751,)}
    assert [m["headers"].get("last") for m in messages] == [None, None, None, None, True]
    # the filtered shape does not see id 7, and "last" marks its own last op
    subset = filtered.changes()
    assert [(m["headers"]["operation"], m["headers"]["op_position"], m["headers"].get("last")) for m in subset] == [
        ("insert", 0, None), ("delete", 2, None), ("insert", 3, None), ("delete", 6, True)
    ]
    assert tx.lsn == fake.lsn


def test_transactions_increase_lsn_and_txid(fake: FakeElectric) -> None:
    follower = Follower(fake)
    first = fake.insert("items", {"id": "2"})
    second = fake.insert("items", {"id": "3"})
    assert second > first
    a, b = follower.changes()
    assert b["headers"]["txids"][0] == a["headers"]["txids"][0] + 1


def test_failed_transaction_rolls_back(fake: FakeElectric) -> None:
    before, lsn = fake.rows("items"), fake.lsn
    with pytest.raises(ValueError):
        with fake.transaction() as tx:
            tx.insert("items", {"id": "5"})
            tx.insert("items", {"id": "5"})  # duplicate key
    assert fake.rows("items") == before and fake.lsn == lsn


def test_moving_through_the_where_is_insert_or_delete(fake: FakeElectric) -> None:
    follower = Follower(fake, where="n >= $1", **{"params[1]": "5"})
    assert [m for m in follower.snapshot if "key" in m] == []
    fake.update("items", {"id": "1", "n": "7"})
    fake.update("items", {"id": "1", "n": "8"})
    fake.update("items", {"id": "1", "n": "2"})
    into, update, out = follower.changes()
    assert into["headers"]["operation"] == "insert" and into["value"]["title"] == "a"
    assert update["headers"]["operation"] == "update" and update["value"] == {"id": "1", "n": "8"}
    assert out["headers"]["operation"] == "delete" and out["value"] == {"id": "1"}


def test_table_without_pk_uses_all_columns() -> None:
    fake = FakeElectric()
    fake.create_table("log", {"b": {"type": "text"}, "a": {"type": "int4"}}, [{"b": "x/y", "a": None}])
    follower = Follower(fake, table="log")
    assert follower.snapshot[0]["key"] == '"public"."log"/_/"x//y"'  # a (NULL) before b
    assert "pk_index" not in str(fake.schema("log"))
    fake.update("log", {"b": "x/y", "a": None}, new={"a": "1"})
    fake.delete("log", {"b": "x/y", "a": "1"})
    delete, insert, delete2 = follower.changes()
    assert (delete["headers"]["operation"], insert["headers"]["operation"]) == ("delete", "insert")
    assert delete["value"] == {"b": "x/y", "a": None}
    assert delete["headers"]["key_change_to"] == insert["key"] == '"public"."log"/"1"/"x//y"'
    assert delete2["value"] == {"b": "x/y", "a": "1"}


def test_composite_pk_key_order_and_escaping() -> None:
    fake = FakeElectric()
    columns = {"b": {"type": "text", "pk_index": 1}, "a": {"type": "text", "pk_index": 0}, "v": {"type": "text"}}
    fake.create_table("t", columns, [{"a": 'q"/', "b": "", "v": "ü"}], schema="s")
    assert list(fake.rows("s.t")) == ['"s"."t"/"q"//"/""']


def test_snapshot_and_log_neither_gap_nor_overlap(fake: FakeElectric) -> None:
    fake.insert("items", {"id": "2"})  # before the shape exists: snapshot only
    follower = Follower(fake)
    fake.insert("items", {"id": "3"})  # after: log only
    assert [m["key"] for m in follower.snapshot if "key" in m] == [key("1"), key("2")]
    assert [m["key"] for m in follower.changes()] == [key("3")]


def test_schema_changes_and_truncate_rotate(fake: FakeElectric) -> None:
    follower = Follower(fake)
    fake.add_column("items", "extra", {"type": "text"}, default="d")
    assert fake.respond("GET", f"/v1/shape?table=items&offset={follower.offset}&handle={follower.handle}").status == 409
    assert fake.rows("items")[key("1")]["extra"] == "d"
    assert "extra" in Follower(fake).snapshot[0]["value"]
    fake.drop_column("items", "title")
    assert "title" not in fake.schema("items")
    fresh = Follower(fake)
    fake.truncate("items")
    assert fake.rows("items") == {}
    status = fake.respond("GET", f"/v1/shape?table=items&offset={fresh.offset}&handle={fresh.handle}").status
    assert status == 409
    assert [m for m in Follower(fake).snapshot if "key" in m] == []


def test_values_are_validated(fake: FakeElectric) -> None:
    with pytest.raises(TypeError):
        fake.insert("items", {"id": 5})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        fake.insert("items", {"id": None})
    with pytest.raises(ValueError):
        fake.insert("items", {"id": "x"})
    with pytest.raises(ValueError):
        fake.insert("items", {"id": "5", "done": "maybe"})
    with pytest.raises(KeyError):
        fake.insert("items", {"id": "5", "nope": "1"})
    with pytest.raises(KeyError):
        fake.update("items", {"id": "404", "title": "x"})
    with pytest.raises(ValueError, match="duplicate key"):
        fake.insert("items", {"id": "1"})
    fake.insert("items", {"id": "2"})
    with pytest.raises(ValueError, match="duplicate key"):
        fake.update("items", {"id": "1"}, new={"id": "2"})


def test_oracle_rows(fake: FakeElectric) -> None:
    fake.insert("items", {"id": "2", "title": "b", "done": "t", "n": "10"})
    assert fake.rows("items", where="n > $1", params=["2"]) == {
        key("2"): {"id": "2", "title": "b", "done": "true", "n": "10", "flags": None}
    }
    assert fake.rows("items", columns=["id", "done"]) == {
        key("1"): {"id": "1", "done": "false"}, key("2"): {"id": "2", "done": "true"}
    }
    assert fake.rows("items", where="done", columns='"id"') == {key("2"): {"id": "2"}}
    assert list(fake.rows("items", where="n = $1", params={"1": "1"})) == [key("1")]
