"""A stateful model of a consistency group with no event loop: two ShapeLogs × FakeElectric.respond × Store,
with the group's own decision (``sync.group.plan``) choosing when to publish (R11).

Transactions change one table or both; the two shapes' responses interleave in any order (chunking,
long-poll timeouts, 409 rotations, crashes that reopen the store). After every group publish at an LSN
``F``, both local tables equal the source as it was at ``F`` — a state Postgres really had — and never a
mix of two moments. At the end, with the source quiet, both converge (R9).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from oracle import local

from replica.errors import ProtocolError, StoreError, TransientError
from replica.protocol import Response, Shape, ShapeLog
from replica.store.store import Store
from replica.sync.group import Member, plan
from replica.testing import FakeElectric

COLUMNS = {"id": {"type": "int4", "pk_index": 0, "not_null": True}, "v": {"type": "int8"}}
TABLES = ("ta", "tb")
ids = st.integers(1, 12)


class Group(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.db = self.tmp / "replica.db"
        self.shapes = {t: Shape(t) for t in TABLES}
        self.published: int | None = None
        self.publishes = 0

    @initialize(chunk=st.integers(120, 2000), rows=st.lists(ids, max_size=8, unique=True), lag=st.booleans())
    def start(self, chunk: int, rows: list[int], lag: bool) -> None:
        self.fake = FakeElectric(chunk_bytes=chunk, long_poll_timeout=0.001)
        self.fake.lag_snapshots = lag  # snapshots ahead of their up-to-date's LSN, as on real Postgres
        for table in TABLES:
            self.fake.create_table(table, COLUMNS, rows=[{"id": str(i), "v": "0"} for i in rows])
        self.history = {self.fake.lsn: self._source()}  # LSN → both tables as Postgres had them
        self.store = Store(self.db)
        self._restart()

    def _restart(self) -> None:
        self.logs = {t: ShapeLog(s, self.store.checkpoint(s)) for t, s in self.shapes.items()}
        self.members = {t: Member(s) for t, s in self.shapes.items()}
        for table in TABLES:
            self._pending(table)

    def _source(self) -> dict[str, dict[str, dict[str, str | None]]]:
        return {t: {k: dict(v) for k, v in self.fake.rows(t).items()} for t in TABLES}

    def _present(self, table: str) -> list[int]:
        return sorted(int(r["id"] or 0) for r in self.fake.rows(table).values())

    @rule(data=st.data(), both=st.booleans(), v=st.integers(-5, 5))
    def transaction(self, data: st.DataObject, both: bool, v: int) -> None:
        tables = TABLES if both else (data.draw(st.sampled_from(TABLES)),)
        with self.fake.transaction() as tx:
            for table in tables:
                i = data.draw(ids)
                if i in self._present(table):
                    if data.draw(st.booleans()):
                        tx.update(table, {"id": str(i), "v": str(v)})
                    else:
                        tx.delete(table, {"id": str(i)})
                else:
                    tx.insert(table, {"id": str(i), "v": str(v)})
        self.history[self.fake.lsn] = self._source()

    @rule(table=st.sampled_from(TABLES))
    def rotate(self, table: str) -> None:
        self.fake.rotate(table)

    @rule()
    def crash(self) -> None:
        self.store.close()
        self.store = Store(self.db)
        self._restart()

    @rule(table=st.sampled_from(TABLES), steps=st.integers(1, 4))
    def poll(self, table: str, steps: int) -> None:
        for _ in range(steps):
            self._step(table)

    def _pending(self, table: str) -> None:
        self.members[table].take(self.store.pending(self.shapes[table]), 0.0)
        for other in TABLES:  # what this member staged may vouch for the other's snapshot
            member = self.members[other]
            if member.snapshot_lsn is not None and member.witness is None:
                member.vouched(self.store.pending(self.shapes[other]))

    @rule(table=st.sampled_from(TABLES))
    def settle_snapshot(self, table: str) -> None:
        """SNAPSHOT_SETTLE has passed with no transaction vouching for the snapshot: the group's
        catch-up, sent now, bounds it (the fake has processed everything by then)."""
        log, member = self.logs[table], self.members[table]
        request = log.probe_request()
        if member.snapshot_lsn is None or member.bound is not None or request is None:
            return
        reply = self.fake.respond("GET", "/v1/shape?" + urlencode(request.params))
        complete = log.probe_answer(Response(reply.status, reply.headers, reply.body))
        if complete is not None:
            member.settled = complete
            member.complete = max(member.complete or 0, complete)
        self._decide()

    def _step(self, table: str) -> None:
        log, member = self.logs[table], self.members[table]
        reply = self.fake.respond("GET", "/v1/shape?" + urlencode(log.next_request().params))
        try:
            commit = log.receive(Response(reply.status, reply.headers, reply.body))
        except TransientError:
            return
        except (ProtocolError, StoreError):
            self.logs[table] = ShapeLog(self.shapes[table], self.store.checkpoint(self.shapes[table]))
            return
        if reply.status == 409:
            member.complete, member.snapshot, member.snapshot_lsn, member.staged = None, True, None, True
            member.witness = member.settled = member.settle_at = None
        if commit is not None:
            self.store.apply(commit, defer=True)
            self._pending(table)
        if log.live and log.complete is not None:
            member.complete = max(member.complete or 0, log.complete)
        self._decide()

    def _decide(self) -> None:
        decided = plan(list(self.members.values()))
        if decided.publish is None:
            return
        self.store.publish_group("default", list(self.shapes.values()), decided.publish)
        for table in TABLES:
            self._pending(table)
        self.publishes += 1
        assert self.published is None or decided.publish >= self.published, "the group's LSN went backwards"
        self.published = decided.publish
        at = max(lsn for lsn in self.history if lsn <= decided.publish)
        for table in TABLES:
            want = {(int(r["id"] or 0),): {"id": int(r["id"] or 0), "v": int(r["v"] or 0)}
                    for r in self.history[at][table].values()}
            assert local(self.db, table, ("id",)) == want, f"{table} at {decided.publish} is not the source at {at}"

    @precondition(lambda self: hasattr(self, "store"))
    @rule()
    def settle(self) -> None:
        for _ in range(300):
            for table in TABLES:
                self._step(table)
                self.settle_snapshot(table)
            if all(log.live and not log.staged for log in self.logs.values()) and not any(
                    m.staged for m in self.members.values()):
                break
        for table in TABLES:
            self._step(table)
        current = self._source()
        for table in TABLES:
            want = {(int(r["id"] or 0),): {"id": int(r["id"] or 0), "v": int(r["v"] or 0)}
                    for r in current[table].values()}
            assert local(self.db, table, ("id",)) == want

    def teardown(self) -> None:
        if hasattr(self, "store"):
            try:
                self.settle()
            finally:
                self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


TestGroup = pytest.mark.guarantee("R11")(Group.TestCase)
