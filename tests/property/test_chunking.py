"""R4: the local tables depend only on the log, never on how the server cut it into responses."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracle import local

from replica.protocol import Response, Shape, ShapeLog
from replica.store.store import Store
from replica.testing import FakeElectric

COLUMNS = {"id": {"type": "int4", "pk_index": 0, "not_null": True}, "title": {"type": "text"},
           "tags": {"type": "text", "dims": 1}}

# An edit: (kind, id, title); applied only where it makes sense for the table at that moment.
edits = st.lists(st.tuples(st.sampled_from(["insert", "update", "delete", "rekey"]), st.integers(1, 30),
                           st.text(max_size=30)), max_size=40)


def apply_edits(fake: FakeElectric, batch: list[tuple[str, int, str]]) -> None:
    for kind, i, title in batch:
        present = {int(r["id"]) for r in fake.rows("items").values()}
        if kind == "insert" and i not in present:
            fake.insert("items", {"id": str(i), "title": title, "tags": "{a,NULL}"})
        elif kind == "update" and i in present:
            fake.update("items", {"id": str(i), "title": title})
        elif kind == "delete" and i in present:
            fake.delete("items", {"id": str(i)})
        elif kind == "rekey" and i in present and i + 100 not in present:
            fake.update("items", {"id": str(i)}, new={"id": str(i + 100)})


def sync_to_up_to_date(fake: FakeElectric, log: ShapeLog, store: Store) -> None:
    for _ in range(10_000):
        request = log.next_request()
        reply = fake.respond("GET", "/v1/shape?" + urlencode(request.params))
        commit = log.receive(Response(reply.status, reply.headers, reply.body))
        if commit is not None:
            store.apply(commit)
            if commit.up_to_date:
                return
        elif log.live:
            return
    raise AssertionError("never reached up-to-date")


@pytest.mark.guarantee("R4")
@given(seed_rows=st.integers(0, 25), batches=st.lists(edits, min_size=1, max_size=4),
       chunks=st.tuples(st.integers(60, 400), st.integers(401, 20_000)))
def test_any_two_chunk_sizes_give_the_same_tables(seed_rows: int, batches: list, chunks: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        states = []
        for n, chunk in enumerate(chunks):
            fake = FakeElectric(chunk_bytes=chunk, long_poll_timeout=0.001)
            fake.create_table("items", COLUMNS, rows=[{"id": str(i), "title": f"t{i}", "tags": "{}"}
                                                      for i in range(1, seed_rows + 1)])
            store = Store(Path(tmp) / f"{n}.db")
            log = ShapeLog(Shape("items"), None)
            seen = []
            sync_to_up_to_date(fake, log, store)
            seen.append(local(Path(tmp) / f"{n}.db", "items", ("id",)))
            for batch in batches:
                apply_edits(fake, batch)
                sync_to_up_to_date(fake, log, store)
                seen.append(local(Path(tmp) / f"{n}.db", "items", ("id",)))
            store.close()
            states.append(seen)
        assert states[0] == states[1]
