"""A stateful model test of subquery shapes: ShapeLog × FakeElectric.respond × Store, no event loop.

Random edits of memberships, projects, teams and issues on the fake, with one subquery shape of
issues per user (the clause drawn from IN, NOT IN, OR, AND, NOT and a nested subquery), small
chunks (snapshots and bursts span responses, so tags and moves are staged too), simulated crashes
(drop the ShapeLog, reopen the Store: R3) and rotations (409 refetch). After every published
up-to-date the local table equals the fake's oracle for that ``where`` — which evaluates the clause
itself, not the tags — so rows that a move took out, or moved in, are checked (R1, R2, R4, R9).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from oracle import expected, local

from replica.protocol import Response, Shape, ShapeLog
from replica.store.store import Store
from replica.testing import FakeElectric

INT = {"type": "int4"}
KEY = {"type": "int4", "pk_index": 0, "not_null": True}
TABLES = {
    "members": {"id": KEY, "user_id": INT, "team_id": INT},
    "projects": {"id": KEY, "team_id": INT, "archived": {"type": "bool"}},
    "memberships": {"id": KEY, "user_id": INT, "project_id": INT},
    "issues": {"id": KEY, "project_id": INT, "owner": INT, "title": {"type": "text"}},
}
MINE = "project_id IN (SELECT project_id FROM memberships WHERE user_id = $1)"
WHERES = [
    MINE,
    f"{MINE} OR owner = $1",
    f"{MINE} AND project_id NOT IN (SELECT id FROM projects WHERE archived = true)",
    "project_id IN (SELECT id FROM projects WHERE team_id IN (SELECT team_id FROM members WHERE user_id = $1))",
    f"NOT ({MINE} OR owner = $1)",
    f"owner = $1 AND NOT {MINE}",
    f"{MINE} OR owner IN (SELECT user_id FROM members WHERE team_id = 1)",  # two subqueries: moves in and out
    # Row-valued: the owner is a member of the issue's project (NULLs on either side never match).
    "(project_id, owner) IN (SELECT project_id, user_id FROM memberships WHERE user_id <> $1) OR owner = $1",
]
USERS = ("1", "2")
small = st.integers(1, 3)  # few values: rows share them, so moves hit several rows
maybe = st.one_of(st.none(), small)


class SubqueryModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.db = self.tmp / "replica.db"
        self.published = 0

    @initialize(chunk=st.integers(150, 1500), wheres=st.lists(st.sampled_from(WHERES), min_size=2, max_size=2),
                seed=st.lists(st.tuples(small, maybe, small), max_size=10))
    def start(self, chunk: int, wheres: list[str], seed: list[tuple[int, int | None, int]]) -> None:
        self.fake = FakeElectric(chunk_bytes=chunk, long_poll_timeout=0.001)
        for name, columns in TABLES.items():
            self.fake.create_table(name, columns)
        for i, (project, owner, _) in enumerate(seed):
            self.fake.insert("issues", {"id": str(i), "project_id": str(project), "owner": None if owner is None else str(owner), "title": "s"})
        for i, (project, _, user) in enumerate(seed):
            self.fake.insert("memberships", {"id": str(i), "user_id": str(user % 2 + 1), "project_id": str(project)})
        self.shapes = [Shape("issues", where=w, params={"1": u}, name=f"issues_{u}")
                       for w, u in zip(wheres, USERS, strict=True)]
        self.store = Store(self.db)
        self.logs = [ShapeLog(s, self.store.checkpoint(s)) for s in self.shapes]

    # --- edits ---

    def _ids(self, table: str) -> list[int]:
        return sorted(int(k.rsplit('"', 2)[-2]) for k in self.fake.rows(table))

    @rule(table=st.sampled_from(["memberships", "members", "issues", "projects"]), i=st.integers(0, 12),
          a=maybe, b=maybe, flag=st.booleans())
    def upsert(self, table: str, i: int, a: int | None, b: int | None, flag: bool) -> None:
        text = [None if v is None else str(v) for v in (a, b)]
        user = None if a is None else str(a % 2 + 1)  # a NULL user too: NULLs in a subquery's rows
        row = {
            "memberships": {"user_id": user, "project_id": text[1]},
            "members": {"user_id": user, "team_id": text[1]},
            "issues": {"project_id": text[0], "owner": text[1], "title": "x" if flag else "y"},
            "projects": {"team_id": text[0], "archived": "t" if flag else "f"},
        }[table]
        if i in self._ids(table):
            self.fake.update(table, {"id": str(i), **row})
        else:
            self.fake.insert(table, {"id": str(i), **row})

    @rule(table=st.sampled_from(list(TABLES)), data=st.data())
    def delete(self, table: str, data: st.DataObject) -> None:
        present = self._ids(table)
        if present:
            self.fake.delete(table, {"id": str(data.draw(st.sampled_from(present)))})

    @rule(data=st.data())
    def transaction(self, data: st.DataObject) -> None:
        """Moves and root changes in one transaction: a reader sees them together or not at all."""
        with self.fake.transaction() as tx:
            for _ in range(data.draw(st.integers(1, 4))):
                table = data.draw(st.sampled_from(["memberships", "issues"]))
                present = self._ids(table)
                if present and data.draw(st.booleans()):
                    tx.delete(table, {"id": str(data.draw(st.sampled_from(present)))})
                else:
                    free = [i for i in range(20, 40) if i not in present]
                    columns = ("user_id", "project_id") if table == "memberships" else ("project_id", "owner")
                    tx.insert(table, {"id": str(free[0]), columns[0]: str(data.draw(st.integers(1, 2))),
                                      columns[1]: str(data.draw(small))})


    @rule(table=st.sampled_from(["memberships", "members"]), data=st.data())
    def flap(self, table: str, data: st.DataObject) -> None:
        """A row of an inner table goes and comes back: a move-out, then a move-in of the same value."""
        present = self._ids(table)
        if present:
            key = str(data.draw(st.sampled_from(present)))
            row = next(r for r in self.fake.rows(table).values() if r["id"] == key)
            self.fake.delete(table, {"id": key})
            self._step(data.draw(st.integers(0, 1)))
            self.fake.insert(table, row)

    @rule(issue=st.integers(0, 12), project=small)
    def change_key(self, issue: int, project: int) -> None:
        present = self._ids("issues")
        if issue in present and issue + 50 not in present:
            self.fake.update("issues", {"id": str(issue)}, new={"id": str(issue + 50), "project_id": str(project)})

    @rule()
    def rotate(self) -> None:
        self.fake.rotate("issues")  # 409: a subquery shape's snapshot again, its tags replaced

    @rule()
    def crash(self) -> None:
        self.store.close()
        self.store = Store(self.db)
        self.logs = [ShapeLog(s, self.store.checkpoint(s)) for s in self.shapes]

    @rule(which=st.integers(0, 1), steps=st.integers(1, 6))
    def poll(self, which: int, steps: int) -> None:
        for _ in range(steps):
            self._step(which)

    # --- checks ---

    def _step(self, which: int) -> None:
        log, shape = self.logs[which], self.shapes[which]
        request = log.next_request()
        reply = self.fake.respond("GET", "/v1/shape?" + urlencode(request.params))
        assert reply.status in (200, 409), reply.body[:300]
        commit = log.receive(Response(reply.status, reply.headers, reply.body))
        if commit is not None:
            applied = self.store.apply(commit)
            if commit.up_to_date:
                self.published += 1
                assert applied.published
                assert self._local(which) == self._oracle(which), f"{shape.where!r} differs after a publish"

    def _local(self, which: int) -> dict:
        return local(self.db, self.shapes[which].local_name, ("id",))

    def _oracle(self, which: int) -> dict:
        shape = self.shapes[which]
        return expected(self.fake, "issues", where=shape.where, params=dict(shape.params))

    def settle(self) -> None:
        for which, log in enumerate(self.logs):
            for _ in range(300):
                self._step(which)
                if log.live and not log.staged:
                    break
            self._step(which)  # one quiet long-poll at the end
            assert self._local(which) == self._oracle(which)

    @invariant()
    def tags_are_hidden(self) -> None:
        # Readers' SELECT * sees the synced columns only; tags live in _replica_ side tables.
        for which in (0, 1):
            for row in self._local(which).values():
                assert set(row) == set(TABLES["issues"])

    def teardown(self) -> None:
        if hasattr(self, "store"):
            try:
                self.settle()
            finally:
                self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


SubqueryModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestSubqueryModel = pytest.mark.guarantee("R2")(pytest.mark.guarantee("R4")(SubqueryModel.TestCase))
