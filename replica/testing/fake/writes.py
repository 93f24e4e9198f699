"""``POST /v1/writes``: the dev servers' write endpoint for local writes (development and tests only).

Off unless enabled (``enable_writes()`` on a server, ``--writes`` on the command line). A batch
``{"batch_id", "changes": [{"table", "op", "key", "value"}]}`` is applied in one transaction and
answered ``200 {"txid": "…"}``; a ``batch_id`` seen before is answered with its first txid and not
applied again (a retried upload). Values come as a writable shape's outbox sends them and are
turned into Postgres text (``typemap.pgtext``). An update or delete of a missing row changes nothing,
as in Postgres; a duplicate key, a value the column refuses, or the ``reject`` rule (a test's
stand-in for a CHECK constraint) answer 400 with the message, and nothing of the batch is applied.
``failures``: answers to give before applying (e.g. 503, or 429 with Retry-After), for tests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from replica.testing.fake.database import Database
from replica.testing.fake.responses import CONTENT_TYPE, FakeResponse, json_body
from replica.typemap.pgtext import to_pg_text

__all__ = ["PATH", "Refused", "Unavailable", "WriteEndpoint", "in_memory"]

PATH = "/v1/writes"
Change = Mapping[str, Any]


class Refused(Exception):
    """The server refuses the batch (a constraint, a bad value): 400 with this message."""


class Unavailable(Exception):
    """The database cannot be reached: 503, the upload is retried."""


class WriteEndpoint:
    """Batches in, one transaction each: ``apply(changes) -> txid`` raises ``Refused`` to refuse."""

    def __init__(self, apply: Callable[[Sequence[Change]], int]) -> None:
        self._apply = apply
        self._lock = threading.Lock()
        self.txids: dict[str, int] = {}  # batch_id → the txid that applied it
        self.received: list[str] = []  # every batch_id posted, retries too, in order
        self.reject: Callable[[Change], str | None] | None = None
        self.failures: list[tuple[int, dict[str, str]]] = []
        self.lose_answers = 0  # apply, then answer 503 this many times: the client must retry

    def respond(self, body: bytes) -> FakeResponse:
        try:
            batch = json.loads(body)
            batch_id, changes = batch["batch_id"], batch["changes"]
            if not isinstance(batch_id, str) or not batch_id or not isinstance(changes, list):
                raise ValueError("batch_id must be a non-empty string and changes a list")
            for change in changes:
                if change.get("op") not in ("insert", "update", "delete") or not isinstance(change.get("table"), str):
                    raise ValueError(f"each change needs a table and an op of insert/update/delete: {change!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _answer(400, {"message": f"invalid batch: {exc}"})
        with self._lock:
            self.received.append(batch_id)
            if self.failures:
                status, headers = self.failures.pop(0)
                return _answer(status, {"message": "try again"}, headers)
            if batch_id not in self.txids:
                try:
                    for change in changes:
                        refusal = self.reject(change) if self.reject is not None else None
                        if refusal is not None:
                            raise Refused(refusal)
                    self.txids[batch_id] = self._apply(changes)
                except Refused as exc:
                    return _answer(400, {"message": str(exc)})
                except Unavailable as exc:
                    return _answer(503, {"message": str(exc)}, {"retry-after": "1"})
            if self.lose_answers:
                self.lose_answers -= 1
                return _answer(503, {"message": "answer lost"})
            return _answer(200, {"txid": str(self.txids[batch_id])})


def _answer(status: int, value: Any, headers: Mapping[str, str] | None = None) -> FakeResponse:
    return FakeResponse(status, {"content-type": CONTENT_TYPE, "cache-control": "no-store", **(headers or {})},
                        json_body(value))


def in_memory(db: Database) -> Callable[[Sequence[Change]], int]:
    """``apply`` for FakeElectric: the batch as one transaction of its in-memory tables."""

    def apply(changes: Sequence[Change]) -> int:
        try:
            with db.transaction() as tx:
                for change in changes:
                    name = change["table"]
                    table = db.table(name)
                    texts = {c: to_pg_text(v, table.columns[c]["type"], table.columns[c].get("dims", 0))
                             for c, v in {**change.get("value", {}), **change["key"]}.items()}
                    key = {c: texts[c] for c in change["key"]}
                    if change["op"] == "insert":
                        tx.insert(name, texts)
                        continue
                    try:
                        table.find(key)
                    except KeyError:
                        continue  # no such row: Postgres updates or deletes nothing
                    if change["op"] == "update":
                        tx.update(name, key, new={c: v for c, v in texts.items() if c not in key})
                    else:
                        tx.delete(name, key)
        except (ValueError, TypeError, KeyError) as exc:
            raise Refused(str(exc).strip('"')) from None
        assert tx.txid is not None
        return tx.txid

    return apply
