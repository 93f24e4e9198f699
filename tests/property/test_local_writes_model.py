"""A stateful model test of local writes (design.md §3j): ShapeLog × FakeElectric (with POST /v1/writes) × Store,
and an app writing the writable shape's view with plain SQL, with no event loop.

Any interleaving of local writes (inserts, updates, deletes, key changes, multi-row statements), uploads
(accepted, rejected, failed, accepted with the answer lost), concurrent server changes, syncs and crashes
keeps, after every step:
  * the view equal to the outbox's changes folded, in order, over the synced rows (an independent fold);
  * the outbox equal to the app's changes in order, less the batches rejected and the accepted ones the
    synced rows show; no accepted change leaves before the publish that shows its transaction (no flicker);
  * a batch's name and contents equal on every retry, and never applied twice by the server;
and once quiet (everything uploaded and synced), the view equal to the server's table and the outbox empty.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import apsw
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from oracle import expected

from replica.errors import ProtocolError, StoreError, TransientError
from replica.protocol import Response, Shape, ShapeLog
from replica.protocol.writes import Batch, batch_body
from replica.store import outbox
from replica.store.store import Store
from replica.testing import FakeElectric, Fault

COLUMNS = {
    "id": {"type": "int4", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "n": {"type": "int8"},
}
SHAPE = Shape("items", writable=True)
SHAPES = {"items": SHAPE}
ids = st.integers(1, 12)
titles = st.sampled_from(["a", "b", "", None, "ü"])
numbers = st.one_of(st.none(), st.integers(-3, 3))


@dataclass
class Sent:
    """What the model knows of one batch."""

    ops: list[tuple[str, int]]
    txid: int | None = None  # applied by the server
    lsn: int | None = None  # its commit LSN there; None: it changed nothing
    accepted: bool = False
    rejected: bool = False
    applied: bool = False  # by the server (a lagging one is accepted first: replication lag)
    attempts: list[Batch] = field(default_factory=list)


class LocalWrites(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.db = self.tmp / "replica.db"
        self.changes: list[tuple[str, int, str | None]] = []  # (op, key, batch_id) in commit order
        self.batches: dict[str, Sent] = {}
        self.synced_lsn = 0
        self.names = 0
        # An accepted batch whose transaction the shape log has not seen yet (Electric lags behind the
        # server's commit): its txid, predicted; no other transaction commits until it is applied.
        self.lagging: tuple[Batch, Sent, int] | None = None

    @initialize(chunk=st.integers(150, 3000), rows=st.lists(ids, max_size=6, unique=True))
    def start(self, chunk: int, rows: list[int]) -> None:
        self.fake = FakeElectric(chunk_bytes=chunk, long_poll_timeout=0.001)
        self.fake.create_table("items", COLUMNS, rows=[{"id": str(i), "title": "seed", "n": str(i)} for i in rows])
        self.endpoint = self.fake.enable_writes()
        self.store = Store(self.db)
        self.log = ShapeLog(SHAPE, self.store.checkpoint(SHAPE))
        self._sync()
        self.app = apsw.Connection(str(self.db))
        self.app.set_busy_timeout(5000)

    # --- the app writes the view ---

    def _view(self) -> dict[int, dict[str, Any]]:
        rows = self.app.execute("SELECT id, title, n FROM items").fetchall()
        return {int(r[0]): {"id": r[0], "title": r[1], "n": r[2]} for r in rows}

    @rule(i=ids, title=titles, n=numbers)
    def local_insert(self, i: int, title: str | None, n: int | None) -> None:
        taken = i in self._view()
        try:
            self.app.execute("INSERT INTO items (id, title, n) VALUES (?, ?, ?)", (i, title, n))
        except apsw.ConstraintError:
            assert taken
            return
        assert not taken
        self.changes.append(("insert", i, None))

    @rule(data=st.data(), title=titles, n=numbers)
    def local_update(self, data: st.DataObject, title: str | None, n: int | None) -> None:
        view = self._view()
        if not view:
            return
        i = data.draw(st.sampled_from(sorted(view)))
        self.app.execute("UPDATE items SET title = ?, n = ? WHERE id = ?", (title, n, i))
        if (view[i]["title"], view[i]["n"]) != (title, n):  # an update that changes nothing sends nothing
            self.changes.append(("update", i, None))

    @rule(data=st.data())
    def local_delete(self, data: st.DataObject) -> None:
        view = self._view()
        if view:
            i = data.draw(st.sampled_from(sorted(view)))
            self.app.execute("DELETE FROM items WHERE id = ?", (i,))
            self.changes.append(("delete", i, None))

    @rule(data=st.data(), new=ids)
    def local_rekey(self, data: st.DataObject, new: int) -> None:
        view = self._view()
        if view and new not in view:
            old = data.draw(st.sampled_from(sorted(view)))
            self.app.execute("UPDATE items SET id = ? WHERE id = ?", (new, old))
            self.changes += [("delete", old, None), ("insert", new, None)]

    @rule()
    def local_multi_row(self) -> None:
        # the rows in the order SQLite visits them (the view's scan: synced rows, then pending ones)
        even = [int(r[0]) for r in self.app.execute("SELECT id FROM items WHERE id % 2 = 0")]
        with self.app:  # one transaction, several rows
            self.app.execute("UPDATE items SET n = coalesce(n, 0) + 100 WHERE id % 2 = 0")
        self.changes += [("update", i, None) for i in even]

    @rule(i=ids)
    def local_rolled_back(self, i: int) -> None:
        self.app.execute("BEGIN")
        self.app.execute("DELETE FROM items WHERE id = ?", (i,))
        self.app.execute("ROLLBACK")

    # --- uploads ---

    @precondition(lambda self: self.lagging is None)
    @rule(outcome=st.sampled_from(["ok", "ok", "rejected", "failed", "lost", "lag"]))
    def upload(self, outcome: str) -> None:
        self.names += 1
        batch: Batch | None = self.store.local_writes("t", partial(outbox.next_batch, new_id=f"b{self.names}"))
        if batch is None:
            assert all(b is not None for _op, _k, b in self.changes)  # nothing waits unsent
            return
        sent = self.batches.get(batch.batch_id)
        if sent is None:  # a new batch: every change not in one yet, in order
            waiting = [n for n, (_op, _key, b) in enumerate(self.changes) if b is None]
            assert [(c.op, c.key["id"]) for c in batch.changes] == [self.changes[n][:2] for n in waiting]
            for n in waiting:
                self.changes[n] = (*self.changes[n][:2], batch.batch_id)
            sent = self.batches[batch.batch_id] = Sent([(c.op, int(c.key["id"])) for c in batch.changes])
        assert not sent.accepted and not sent.rejected
        assert not sent.attempts or sent.attempts[0] == batch  # a retry sends the same batch
        sent.attempts.append(batch)
        if outcome == "failed":
            self.store.local_writes("t", partial(outbox.failed, batch_id=batch.batch_id, error="offline"))
            return
        if outcome == "rejected":
            self._reject(batch, sent)
            return
        present = self._present()
        if outcome == "lag" and sent.txid is None and not any(c.op == "insert" and c.key["id"] in present
                                                              for c in batch.changes):
            predicted = self.fake._db.txid + 1  # the fake gives txids in order
            self.store.local_writes("t", partial(outbox.accepted, batch_id=batch.batch_id, txid=predicted,
                                                 now=_now(), shapes=SHAPES))
            sent.accepted = True
            self.lagging = (batch, sent, predicted)
            return
        before, applied_before = self.fake.lsn, sent.txid is not None
        answer = self.endpoint.respond(batch_body(batch))
        if answer.status != 200:  # e.g. an insert of a key the server has meanwhile: refused
            assert answer.status == 400 and not applied_before
            self._reject(batch, sent)
            return
        txid = int(answer.json()["txid"])
        if applied_before:
            assert txid == sent.txid and self.fake.lsn == before  # idempotent: applied once
        else:
            sent.txid, sent.lsn = txid, (self.fake.lsn if self.fake.lsn != before else None)
            sent.applied = True
        if outcome == "ok":
            self.store.local_writes("t", partial(outbox.accepted, batch_id=batch.batch_id, txid=txid,
                                                 now=_now(), shapes=SHAPES))
            sent.accepted = True

    @precondition(lambda self: self.lagging is not None)
    @rule()
    def apply_lagged(self) -> None:
        assert self.lagging is not None
        batch, sent, predicted = self.lagging
        before = self.fake.lsn
        answer = self.endpoint.respond(batch_body(batch))
        assert answer.status == 200 and int(answer.json()["txid"]) == predicted
        sent.txid, sent.lsn, sent.applied = predicted, (self.fake.lsn if self.fake.lsn != before else None), True
        self.lagging = None

    def _reject(self, batch: Batch, sent: Sent) -> None:
        self.store.local_writes("t", partial(outbox.reject, batch_id=batch.batch_id, shapes=SHAPES))
        sent.rejected = True

    # --- the server and the sync ---

    def _present(self) -> list[int]:
        return sorted(int(r["id"]) for r in self.fake.rows("items").values())

    @precondition(lambda self: self.lagging is None)
    @rule(i=ids, title=titles)
    def server_insert(self, i: int, title: str | None) -> None:
        if i not in self._present():
            self.fake.insert("items", {"id": str(i), "title": title, "n": "7"})

    @precondition(lambda self: self.lagging is None)
    @rule(data=st.data(), title=titles)
    def server_update(self, data: st.DataObject, title: str | None) -> None:
        present = self._present()
        if present:
            self.fake.update("items", {"id": str(data.draw(st.sampled_from(present))), "title": title})

    @precondition(lambda self: self.lagging is None)
    @rule(data=st.data())
    def server_delete(self, data: st.DataObject) -> None:
        present = self._present()
        if present:
            self.fake.delete("items", {"id": str(data.draw(st.sampled_from(present)))})

    @rule()
    def rotate(self) -> None:
        self.fake.rotate("items")

    @rule()
    def fault(self) -> None:
        self.fake.faults.add(Fault("status", status=503))

    @rule()
    def crash(self) -> None:
        self.store.close()
        self.store = Store(self.db)
        self.log = ShapeLog(SHAPE, self.store.checkpoint(SHAPE))

    @rule(steps=st.integers(1, 5))
    def poll(self, steps: int) -> None:
        for _ in range(steps):
            self._step()

    def _step(self) -> None:
        request = self.log.next_request()
        reply = self.fake.respond("GET", "/v1/shape?" + urlencode(request.params))
        try:
            commit = self.log.receive(Response(reply.status, reply.headers, reply.body))
        except TransientError:
            return
        except (ProtocolError, StoreError):
            self.log = ShapeLog(SHAPE, self.store.checkpoint(SHAPE))
            return
        if commit is not None:
            applied = self.store.apply(commit)
            if applied.published and applied.lsn is not None:
                self.synced_lsn = max(self.synced_lsn, applied.lsn)

    def _sync(self) -> None:
        self.fake.faults.clear()
        for _ in range(200):
            self._step()
            if self.log.live and not self.log.staged:
                break
        self._step()
        assert self.log.live

    # --- what must hold ---

    def _outbox(self) -> list[tuple[int, str, dict[str, Any], dict[str, Any], str | None]]:
        return [(int(seq), str(op), json.loads(k), json.loads(v), b) for seq, op, k, v, b in self.app.execute(
            'SELECT "seq", "operation", "key", "value", "batch_id" FROM "_replica_outbox" ORDER BY "seq"')]

    @precondition(lambda self: hasattr(self, "app"))
    @invariant()
    def view_is_the_outbox_folded_over_the_synced_rows(self) -> None:
        synced = {int(r[0]): {"id": r[0], "title": r[1], "n": r[2]}
                  for r in self.app.execute("SELECT id, title, n FROM _replica_synced_items")}
        folded = dict(synced)
        changed: dict[int, dict[str, Any] | None] = {}
        for _seq, op, key, value, _b in self._outbox():
            i = int(key["id"])
            row = changed[i] if i in changed else folded.get(i)
            if op == "delete":
                row = None
            elif op == "insert":
                row = {"id": i, "title": value["title"], "n": value["n"]}
            elif row is not None:
                row = {**row, **value}
            changed[i] = row
        for i, row in changed.items():
            if row is None:
                folded.pop(i, None)
            else:
                folded[i] = row
        assert self._view() == folded

    @precondition(lambda self: hasattr(self, "app"))
    @invariant()
    def outbox_is_the_apps_changes_less_the_settled_batches(self) -> None:
        rows = self._outbox()
        kept = [(op, int(k["id"]), b) for _s, op, k, _v, b in rows]
        model = iter(self.changes)
        for op, key, batch in kept:  # in order, a subsequence of the app's changes
            for want in model:
                if want == (op, key, batch):
                    break
                self._settled(want)  # skipped: it must belong to a batch that is settled
            else:
                raise AssertionError(f"outbox holds {(op, key, batch)} the app never wrote, or out of order")
        for want in model:
            self._settled(want)

    def _settled(self, want: tuple[str, int, str | None]) -> None:
        """A change gone from the outbox: its batch was rejected, or accepted and shown by the synced rows."""
        sent = self.batches.get(want[2] or "")
        assert sent is not None and (sent.rejected or sent.accepted), f"{want} lost"
        assert not sent.accepted or sent.applied, f"{want} confirmed before the server applied it"
        if sent.accepted and sent.lsn is not None:  # a no-op transaction cannot flicker
            assert sent.lsn <= self.synced_lsn, f"{want} confirmed too early"

    @precondition(lambda self: hasattr(self, "app"))
    @rule()
    def settle(self) -> None:
        """Quiet: upload everything, sync; the view is the server's table and the outbox is empty."""
        if self.lagging is not None:
            self.apply_lagged()
        for _ in range(50):
            if not self.store.local_writes("t", outbox.waiting, False):
                break
            self.upload("ok")
        self._sync()
        # A batch whose transaction changed no row (an update of a row deleted meanwhile) has no LSN
        # and appears in no shape: it leaves at the first publish CONFIRM_GRACE after it was accepted.
        self.app.execute('UPDATE "_replica_outbox" SET "accepted_at" = "accepted_at" - ?', (outbox.CONFIRM_GRACE + 1,))
        self.fake.insert("items", {"id": str(1000 + self.names), "title": "tick", "n": None})
        self.names += 1
        self._sync()
        assert self._outbox() == []
        want = {k[0]: {"id": v["id"], "title": v["title"], "n": v["n"]} for k, v in expected(self.fake, "items").items()}
        assert self._view() == want

    def teardown(self) -> None:
        try:
            if hasattr(self, "app"):
                self.settle()
        finally:
            if hasattr(self, "app"):
                self.app.close()
            if hasattr(self, "store"):
                self.store.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def _now() -> float:
    return time.time()


TestLocalWrites = LocalWrites.TestCase
TestLocalWrites.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
