"""Local writes on the wire: an upload batch, its JSON body, and what the server's answer means.

``POST`` ``{"batch_id": "…", "changes": [{"table", "op", "key", "value"}, …]}`` → ``200 {"txid": "…"}``
(the Postgres transaction that applied the batch); 4xx rejects the batch (``WriteRejected``); 5xx,
429 and network errors are retried (``ServerBusy``, with Retry-After). The same ``batch_id`` is sent
on every retry so the server can apply a batch once. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from replica.errors import ProtocolError, ServerBusy, WriteRejected
from replica.protocol.txids import parse_txid

__all__ = ["Batch", "LocalChange", "batch_body", "parse_txid_answer", "upload_outcome"]


@dataclass(frozen=True)
class LocalChange:
    """One local change: the local table it was made to, the Postgres ``table``, the operation
    (insert/update/delete), the row's ``key`` and its ``value`` (an update's key and changed columns)."""

    name: str
    table: str
    op: str
    key: Mapping[str, Any]
    value: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "op": self.op, "key": dict(self.key), "value": dict(self.value)}


@dataclass(frozen=True)
class Batch:
    """Changes uploaded together, in the order they were committed locally, under a stable name."""

    batch_id: str
    changes: tuple[LocalChange, ...]

    def to_json(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "changes": [c.to_json() for c in self.changes]}


def batch_body(batch: Batch) -> bytes:
    return json.dumps(batch.to_json(), separators=(",", ":"), allow_nan=False).encode()


def parse_txid_answer(value: Any) -> int:
    """The txid an upload returned (a number, or its decimal text); ProtocolError if it is none."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        if not isinstance(text, str):
            raise ValueError(f"got {value!r}")
        return parse_txid(text)
    except ValueError as exc:
        raise ProtocolError(f"an accepted upload must return the Postgres txid of its transaction: {exc}") from None


def upload_outcome(status: int, body: bytes, retry_after: float | None) -> int:
    """The txid of a 200; raises ``WriteRejected`` for a 4xx but 429, ``ServerBusy`` for 429 and 5xx."""
    if status == 200:
        try:
            answer = json.loads(body)
        except ValueError:
            raise ProtocolError("an accepted upload must answer JSON {\"txid\": …}") from None
        if not isinstance(answer, dict) or "txid" not in answer:
            raise ProtocolError("an accepted upload must answer JSON {\"txid\": …}")
        return parse_txid_answer(answer["txid"])
    if status == 429 or status >= 500:
        raise ServerBusy(f"the write endpoint answered {status}", status=status, retry_after=retry_after)
    if 400 <= status < 500:
        raise WriteRejected(_message(body) or f"the write endpoint answered {status}", status=status)
    raise ProtocolError(f"the write endpoint answered {status}, expected 200 with a txid")


def _message(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        answer = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(answer, dict):
        for key in ("message", "error", "detail"):
            if isinstance(answer.get(key), str):
                return str(answer[key])[:500]
    return text[:500]
