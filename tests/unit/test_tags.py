"""Subquery shapes, case by case: move events parsed, tags kept beside the rows, moves applied in log
order, staged with a burst, replaced with a refetched snapshot, and not seen by readers before
their up-to-date (R2). The stateful model (tests/property/test_subquery_model.py) explores the rest."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import pytest
from oracle import expected, local

from replica.errors import ProtocolError
from replica.protocol import Response, Shape, ShapeLog
from replica.protocol.messages import Change, Move, parse_body
from replica.store.store import Store
from replica.sync.group import group_members
from replica.testing import FakeElectric

INT = {"type": "int4"}
KEY = {"type": "int4", "pk_index": 0, "not_null": True}
MINE = "project_id IN (SELECT project_id FROM memberships WHERE user_id = $1)"
TEAM = "owner IN (SELECT user_id FROM members WHERE team_id = 7)"


class Synced:
    """One subquery shape of issues synced by hand: ShapeLog × fake × Store."""

    def __init__(self, tmp: Path, where: str, chunk: int = 4096) -> None:
        self.fake = FakeElectric(chunk_bytes=chunk, long_poll_timeout=0.001)
        self.fake.create_table("memberships", {"id": KEY, "user_id": INT, "project_id": INT})
        self.fake.create_table("members", {"id": KEY, "user_id": INT, "team_id": INT})
        self.fake.create_table("issues", {"id": KEY, "project_id": INT, "owner": INT})
        self.db = tmp / "replica.db"
        self.shape = Shape("issues", where=where, params={"1": "1"}, name="mine")
        self.store = Store(self.db)
        self.log = ShapeLog(self.shape, self.store.checkpoint(self.shape))

    def step(self) -> bool:
        """One request and its commit; True at a published up-to-date."""
        request = self.log.next_request()
        reply = self.fake.respond("GET", "/v1/shape?" + urlencode(request.params))
        commit = self.log.receive(Response(reply.status, reply.headers, reply.body))
        if commit is None:
            return False
        self.store.apply(commit)
        return commit.up_to_date

    def sync(self) -> None:
        for _ in range(100):
            if self.step():
                break
        assert self.rows() == self.oracle()

    def crash(self) -> None:
        self.store.close()
        self.store = Store(self.db)
        self.log = ShapeLog(self.shape, self.store.checkpoint(self.shape))

    def rows(self) -> list[int]:
        return sorted(k[0] for k in local(self.db, "mine", ("id",)))

    def oracle(self) -> list[int]:
        return sorted(k[0] for k in expected(self.fake, "issues", where=self.shape.where, params={"1": "1"}))


@pytest.fixture
def mine(tmp_path: Path) -> Synced:
    return Synced(tmp_path, MINE)


def test_move_events_parse_on_both_paths() -> None:
    body = (b'[{"headers":{"event":"move-out","patterns":[{"pos":0,"value":"ab"}],"txids":[7]}},'
            b'{"headers":{"event":"something-new"}},'
            b'{"key":"k","value":{"id":"1"},"headers":{"operation":"insert","tags":["ab/1"],"is_move_in":true}}]')
    fast = parse_body(body)
    careful = parse_body(body.replace(b'"txids":[7]', b'"txids":[7],"x":{"deep":[1,{"a":[]}]}') + b"  ")
    for messages in (fast, careful):
        assert [type(m) for m in messages] == [Move, Change]
        assert messages[0][:2] == ("move-out", ((0, "ab"),))
    with pytest.raises(ProtocolError, match="pattern"):
        parse_body(b'[{"headers":{"event":"move-in","patterns":[{"pos":"0","value":"ab"}]}}]')


def test_a_move_out_deletes_the_rows_it_takes_and_tags_stay_out_of_the_table(mine: Synced) -> None:
    mine.fake.insert("memberships", {"id": "1", "user_id": "1", "project_id": "10"})
    for i, project in enumerate(["10", "10", "11"]):
        mine.fake.insert("issues", {"id": str(i), "project_id": project, "owner": "5"})
    mine.sync()
    assert mine.rows() == [0, 1]
    assert mine.store.connection.execute("SELECT count(*) FROM _replica_tags_mine").fetchall() == [(2,)]
    mine.fake.delete("memberships", {"id": "1"})
    mine.sync()
    assert mine.rows() == []
    assert mine.store.connection.execute("SELECT count(*) FROM _replica_slots_mine").fetchall() == [(0,)]
    mine.fake.insert("memberships", {"id": "2", "user_id": "1", "project_id": "11"})  # a move-in: rows arrive
    mine.sync()
    assert mine.rows() == [2]
    columns = [c[1] for c in mine.store.connection.execute('PRAGMA table_info("mine")')]
    assert columns == ["id", "project_id", "owner"]


def test_a_burst_keeps_its_tags_so_a_later_move_out_finds_its_rows(tmp_path: Path) -> None:
    s = Synced(tmp_path, MINE, chunk=150)  # each change its own chunk: the burst is staged
    s.fake.insert("memberships", {"id": "1", "user_id": "1", "project_id": "10"})
    s.sync()
    for i in range(4):
        s.fake.insert("issues", {"id": str(i), "project_id": "10"})
    s.sync()
    assert s.rows() == [0, 1, 2, 3]
    s.fake.delete("memberships", {"id": "1"})
    s.sync()
    assert s.rows() == []


def test_a_move_in_makes_a_condition_true_again(tmp_path: Path) -> None:
    s = Synced(tmp_path, f"{MINE} OR {TEAM}")
    s.fake.insert("memberships", {"id": "1", "user_id": "1", "project_id": "10"})
    s.fake.insert("members", {"id": "1", "user_id": "5", "team_id": "7"})
    s.fake.insert("issues", {"id": "1", "project_id": "10", "owner": "5"})
    s.sync()
    s.fake.delete("memberships", {"id": "1"})  # one branch false: the other keeps the row
    s.sync()
    assert s.rows() == [1]
    s.fake.insert("memberships", {"id": "2", "user_id": "1", "project_id": "10"})  # move-in, row already held
    s.sync()
    s.fake.delete("members", {"id": "1"})  # the other branch false: the first keeps it again
    s.sync()
    assert s.rows() == [1]


def test_a_staged_move_out_is_not_seen_before_its_up_to_date_and_survives_a_crash(tmp_path: Path) -> None:
    s = Synced(tmp_path, MINE, chunk=100)  # a move-out event is a chunk of its own
    s.fake.insert("memberships", {"id": "1", "user_id": "1", "project_id": "10"})
    s.fake.insert("issues", {"id": "1", "project_id": "10"})
    s.sync()
    with s.fake.transaction() as tx:
        tx.delete("memberships", {"id": "1"})
        tx.insert("memberships", {"id": "2", "user_id": "2", "project_id": "10"})
    s.fake.insert("memberships", {"id": "3", "user_id": "1", "project_id": "12"})  # more log: the move-out
    s.fake.insert("issues", {"id": "2", "project_id": "12"})  # is staged first
    assert not s.step()  # the move-out, staged
    assert s.rows() == [1]  # R2: a reader still sees the row
    s.crash()
    s.sync()
    assert s.rows() == [2]


def test_a_refetched_snapshot_brings_its_tags(mine: Synced) -> None:
    mine.fake.insert("memberships", {"id": "1", "user_id": "1", "project_id": "10"})
    mine.fake.insert("issues", {"id": "1", "project_id": "10"})
    mine.sync()
    mine.fake.rotate("issues")  # 409: the snapshot again, with its tags
    mine.fake.insert("issues", {"id": "2", "project_id": "10"})
    mine.sync()
    mine.fake.delete("memberships", {"id": "1"})
    mine.sync()
    assert mine.rows() == []


def test_plain_shapes_make_no_tag_tables_and_subquery_shapes_join_no_group(tmp_path: Path) -> None:
    fake = FakeElectric(long_poll_timeout=0.001)
    fake.create_table("issues", {"id": KEY, "project_id": INT, "owner": INT}, rows=[{"id": "1"}])
    store = Store(tmp_path / "plain.db")
    log = ShapeLog(Shape("issues"), None)
    for _ in range(5):
        request = log.next_request()
        reply = fake.respond("GET", "/v1/shape?" + urlencode(request.params))
        commit = log.receive(Response(reply.status, reply.headers, reply.body))
        if commit is not None:
            store.apply(commit)
    names = [r[0] for r in store.connection.execute("SELECT name FROM sqlite_master WHERE name LIKE '%tags%'")]
    assert names == []
    store.close()
    plain, other = Shape("issues", group="g"), Shape("projects", group="g")
    tagged = Shape("issues", where=MINE, params={"1": "1"}, name="mine", group="g")
    assert group_members([plain, other, tagged]) == {"g": [plain, other]}
    assert tagged.subquery and not plain.subquery
