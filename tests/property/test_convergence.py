"""A stateful model test with no event loop: ShapeLog × FakeElectric.respond × Store.

Random edits on the fake, rotations (409), injected faults and simulated crashes (drop the
ShapeLog and reopen the Store) interleave with polling. After every published commit the local
table equals the fake's table (R1, R2, R9): a publish happens only at up-to-date, and nothing
changes on the fake between its answer and our apply. At the end, with the source quiet, the
replica converges (R9) — whatever the chunk size (R4).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from oracle import expected, local

from replica.errors import ProtocolError, StoreError, TransientError
from replica.protocol import Response, Shape, ShapeLog
from replica.store.store import Store
from replica.testing import FakeElectric, Fault

COLUMNS = {
    "id": {"type": "int4", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "done": {"type": "bool"},
    "score": {"type": "float8"},
}
titles = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
ids = st.integers(1, 40)
FAULTS = [
    Fault("status", status=503, retry_after=1),
    Fault("status", status=500, times=2),
    Fault("malformed"),
    Fault("truncate"),
    Fault("drop_headers", headers=("electric-offset",)),
    Fault("must_refetch", handle=True),
    Fault("must_refetch", handle=False),
    Fault("stale"),
]


class Convergence(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.db = self.tmp / "replica.db"
        self.shape = Shape("items")
        self.published = 0

    @initialize(chunk=st.integers(150, 4000), rows=st.lists(ids, max_size=25, unique=True))
    def start(self, chunk: int, rows: list[int]) -> None:
        self.fake = FakeElectric(chunk_bytes=chunk, long_poll_timeout=0.001)
        self.fake.create_table("items", COLUMNS, rows=[self._row(i, "seed") for i in rows])
        self.store = Store(self.db)
        self.log = ShapeLog(self.shape, self.store.checkpoint(self.shape))

    @staticmethod
    def _row(i: int, title: str) -> dict[str, str | None]:
        return {"id": str(i), "title": title, "done": "t" if i % 2 else "f", "score": f"{i / 4}"}

    def _present(self) -> list[int]:
        return sorted(int(r["id"]) for r in self.fake.rows("items").values())

    @rule(i=ids, title=titles)
    def insert(self, i: int, title: str) -> None:
        if i not in self._present():
            self.fake.insert("items", self._row(i, title))

    @rule(data=st.data(), title=titles, done=st.booleans())
    def update(self, data: st.DataObject, title: str, done: bool) -> None:
        present = self._present()
        if present:
            i = data.draw(st.sampled_from(present))
            self.fake.update("items", {"id": str(i), "title": title, "done": "t" if done else "f"})

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        present = self._present()
        if present:
            self.fake.delete("items", {"id": str(data.draw(st.sampled_from(present)))})

    @rule(data=st.data(), new=ids)
    def change_pk(self, data: st.DataObject, new: int) -> None:
        present = self._present()
        if present and new not in present:
            old = data.draw(st.sampled_from(present))
            self.fake.update("items", {"id": str(old)}, new={"id": str(new)})

    @rule(data=st.data())
    def transaction(self, data: st.DataObject) -> None:
        present = self._present()
        free = [i for i in range(41, 60) if i not in present]
        with self.fake.transaction() as tx:
            for i in free[: data.draw(st.integers(0, 3))]:
                tx.insert("items", self._row(i, "tx"))
            for i in present[: data.draw(st.integers(0, 2))]:
                tx.update("items", {"id": str(i), "score": "Infinity"})

    @rule()
    def rotate(self) -> None:
        self.fake.rotate("items")

    @rule(fault=st.sampled_from(FAULTS))
    def fault(self, fault: Fault) -> None:
        self.fake.faults.add(fault)

    @rule()
    def crash(self) -> None:
        # Whatever was not committed is lost; the next run starts from the stored checkpoint (R3).
        self.store.close()
        self.store = Store(self.db)
        self.log = ShapeLog(self.shape, self.store.checkpoint(self.shape))

    @rule(steps=st.integers(1, 6))
    def poll(self, steps: int) -> None:
        for _ in range(steps):
            self._step()

    def _step(self) -> None:
        request = self.log.next_request()
        reply = self.fake.respond("GET", "/v1/shape?" + urlencode(request.params))
        response = Response(reply.status, reply.headers, reply.body)
        try:
            commit = self.log.receive(response)
        except TransientError:
            return  # resend the same request (the fault plan is finite)
        except (ProtocolError, StoreError):
            self.log = ShapeLog(self.shape, self.store.checkpoint(self.shape))
            return
        if commit is not None:
            applied = self.store.apply(commit)
            if commit.up_to_date:
                self.published += 1
                assert applied.published
                assert self._local() == expected(self.fake, "items"), "published state differs from the source"

    def _local(self) -> dict:
        return local(self.db, "items", ("id",))

    @precondition(lambda self: hasattr(self, "store"))
    @rule()
    def settle(self) -> None:
        self.fake.faults.clear()
        for _ in range(200):
            self._step()
            if self.log.live and not self.log.staged:
                break
        self._step()  # one quiet long-poll answer at the current end
        assert self.log.live
        assert self._local() == expected(self.fake, "items")

    def teardown(self) -> None:
        if hasattr(self, "store"):
            try:
                self.settle()
            finally:
                self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


TestConvergence = pytest.mark.guarantee("R9")(pytest.mark.guarantee("R4")(Convergence.TestCase))
