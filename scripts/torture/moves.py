"""kill9.py --subquery: the torture of a subquery shape (imported by kill9.py, not run alone).

The synced shape is ``items WHERE project IN (SELECT project_id FROM memberships WHERE user_id = $1)``
with ``$1 = 1``. Besides kill9's row edits, the mutator adds and removes user 1's memberships (a
move-in of a whole project's rows, or a move-out), moves memberships between projects, and commits
transactions that edit many rows and a membership at once (so a move-out lands inside a response
that has no up-to-date: it is staged). Two more kill moments join kill9's:

* ``move-in``: a response carrying moved-in rows (``is_move_in``) was sent; killed while or
  shortly after it is applied (a move-in batch may span several responses: staged);
* ``move-out-staged``: a response carrying a ``move-out`` event and no up-to-date was sent: killed
  before the up-to-date that publishes it.

The oracle is the fake's own evaluation of the where (``fake.rows``); the last syncer must reach it.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from replica.testing import FakeElectric

WHERE = "project IN (SELECT project_id FROM memberships WHERE user_id = $1)"
PARAMS = {"1": "1"}
PROJECTS = 12
MEMBERSHIPS = {
    "id": {"type": "int8", "pk_index": 0, "not_null": True},
    "user_id": {"type": "int8"},
    "project_id": {"type": "int8"},
}
TARGETS = ("move-in", "move-out-staged")


def columns(base: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**base, "project": {"type": "int8"}}


def setup(fake: FakeElectric, rng: random.Random) -> None:
    """User 1 is in half the projects; others in some."""
    rows = [{"id": str(p), "user_id": "1", "project_id": str(p)} for p in range(0, PROJECTS, 2)]
    rows += [{"id": str(100 + p), "user_id": str(rng.randint(2, 4)), "project_id": str(p)} for p in range(PROJECTS)]
    fake.create_table("memberships", MEMBERSHIPS, rows=rows)


def project(rng: random.Random) -> str:
    return str(rng.randrange(PROJECTS))


class Memberships:
    """The mutator's membership edits (called under the mutator's lock)."""

    def __init__(self, fake: FakeElectric, rng: random.Random) -> None:
        self.fake, self.rng = fake, rng
        self.next_id = 1000

    def mine(self) -> list[dict[str, str | None]]:
        return [row for row in self.fake.rows("memberships").values() if row["user_id"] == "1"]

    def step(self, ids: set[int], counts: Any) -> None:
        rng, fake = self.rng, self.fake
        roll = rng.random()
        mine = self.mine()
        if roll < 0.35 or len(mine) < 3:  # keep user 1 in a few projects, so the shape has rows to move
            self.next_id += 1
            fake.insert("memberships", {"id": str(self.next_id), "user_id": "1", "project_id": project(rng)})
            counts["join"] += 1
        elif roll < 0.65:
            fake.delete("memberships", {"id": rng.choice(mine)["id"]})
            counts["leave"] += 1
        elif roll < 0.8:
            fake.update("memberships", {"id": rng.choice(mine)["id"], "project_id": project(rng)})
            counts["switch"] += 1
        else:  # many row edits and a membership in one transaction: the move-out follows a long batch
            with fake.transaction() as tx:
                for i in rng.sample(sorted(ids), min(len(ids), rng.randrange(20, 80))):
                    tx.update("items", {"id": str(i), "title": f"batch {rng.random()}", "project": project(rng)})
                tx.delete("memberships", {"id": rng.choice(mine)["id"]})
            counts["batch_and_leave"] += 1


def flags(body: bytes) -> tuple[bool, bool]:
    """(moved-in rows, a move-out event) in a response body."""
    return b'"is_move_in":true' in body, b'"event":"move-out"' in body


def before_final_sync(fake: FakeElectric, ids: set[int]) -> None:
    """With the syncer dead: a move-out, then a burst bigger than a response after it, so the last
    syncer catches up with that move-out staged (in a response without up-to-date) and must
    publish it with the burst. (During the run, later moves of the same project can hide a lost
    move-out; here nothing comes after it.)"""
    held = Counter(row["project"] for row in fake.rows("items", WHERE, PARAMS).values())
    mine = [row for row in fake.rows("memberships").values() if row["user_id"] == "1" and held[row["project_id"]]]
    if not mine:
        return
    leaving = max(mine, key=lambda row: held[row["project_id"]])
    for row in fake.rows("memberships").values():  # every membership of user 1 in that project
        if row["user_id"] == "1" and row["project_id"] == leaving["project_id"]:
            fake.delete("memberships", {"id": row["id"]})
    with fake.transaction() as tx:
        for i in sorted(ids):
            tx.update("items", {"id": str(i), "title": f"after the move-out {i}"})
