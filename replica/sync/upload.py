"""Uploading local writes: the outbox (``_replica_outbox``) to the app's server, one batch at a time, in order.

``upload_loop`` runs beside the follow loops, in the process that holds the store, when a shape is
writable and the Replica has an ``upload``. It names the next batch in a transaction of its own
(``outbox.next_batch``: a retry, a restart or a kill -9 sends the same changes under the same
``batch_id``), hands it to the uploader, and records the outcome: the txid (the batch's changes then
stay visible until the publish that shows them removes them: ``store.publish``), a rejection (the
batch is rolled back locally and reported), or a failure (retried with backoff, Retry-After as a
floor). The app writes from any process or library, unseen: every ``POLL`` seconds the loop asks
SQLite whether anyone committed to the file (``_Watch``), and only then reads the outbox.

The uploader is the app's function (``Replica(upload=fn)``, called in the app's process, also when
the engine runs in a child) or ``HttpUpload`` (the daemon's ``[writes] url``). Between processes an
upload's outcome travels as a plain tuple (``Outcome``).
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import anyio

from replica.errors import (
    NetworkError,
    ProtocolError,
    ReplicaError,
    ServerBusy,
    StoreError,
    TransientError,
    WriteRejected,
)
from replica.protocol import writes
from replica.protocol.shape import Shape
from replica.protocol.writes import Batch
from replica.store import Store, connect, outbox
from replica.sync import http
from replica.sync.backoff import Backoff, parse_retry_after

__all__ = ["POLL", "HttpUpload", "Outcome", "outcome_of", "raise_outcome", "upload_loop"]

log = logging.getLogger("replica.upload")

POLL = 0.2  # seconds between looks for a commit to the file: a local write is on its way within this
Outcome = tuple[str, Any, Any]  # ("txid", txid, None) | ("rejected", message, status) | ("retry", message, retry_after)
Upload = Callable[[Batch], Awaitable[Outcome | None]]


async def upload_loop(
    store: Store, call_store: Callable[..., Awaitable[Any]], upload: Upload, shapes: tuple[Shape, ...],
    backoff: Backoff, rejected: Callable[[Batch, str], None],
) -> None:
    """Upload the outbox until cancelled; ``rejected(batch, message)`` hears of each rolled-back batch."""
    writable = {s.local_name: s for s in shapes if s.writable}
    attempt = 0
    with _Watch(store.path) as watch:
        while True:
            if not watch.changed() and attempt == 0:
                await anyio.sleep(POLL)
                continue
            try:
                attempt = await _step(store, call_store, upload, writable, attempt, backoff, rejected)
            except StoreError as exc:  # the outbox stays as it was: try again later
                delay = backoff.delay(attempt)
                attempt += 1
                log.warning("uploading local writes: %s; retrying in %.1f s", exc, delay)
                await anyio.sleep(delay)


class _Watch:
    """Did anyone commit to the file since the last look? ``PRAGMA data_version`` on a read-only
    connection of its own, asked on the event loop (microseconds, no lock): the outbox is read
    (through the writer thread) only after a commit, so an idle writable Replica costs ~nothing."""

    def __init__(self, path: str) -> None:
        self._conn = None if path in ("", ":memory:") else connect(path)
        self._seen: Any = None

    def changed(self) -> bool:
        if self._conn is None:
            return True
        try:
            version = self._conn.pragma("data_version")
        except Exception:  # an unreadable file: let the store's own read report it
            return True
        changed, self._seen = version != self._seen, version
        return bool(changed)

    def __enter__(self) -> _Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()


async def _step(
    store: Store, call_store: Callable[..., Awaitable[Any]], upload: Upload, writable: Mapping[str, Shape],
    attempt: int, backoff: Backoff, rejected: Callable[[Batch, str], None],
) -> int:
    """One look at the outbox, and one upload if anything waits; the next attempt number."""
    if not await call_store(store.local_writes, "reading the outbox", outbox.waiting, False):
        return attempt
    batch: Batch | None = await call_store(store.local_writes, "naming an upload batch",
                                           partial(outbox.next_batch, new_id=uuid.uuid4().hex))
    if batch is None:
        return attempt
    try:
        txid = raise_outcome(await upload(batch))
    except WriteRejected as exc:
        await call_store(store.local_writes, "rolling back a rejected batch",
                         partial(outbox.reject, batch_id=batch.batch_id, shapes=writable))
        log.warning("the server rejected upload batch %s (%d changes), rolled back locally: %s",
                    batch.batch_id, len(batch.changes), exc)
        rejected(batch, str(exc))
        return 0
    except (TransientError, ProtocolError) as exc:
        await call_store(store.local_writes, "noting an upload failure",
                         partial(outbox.failed, batch_id=batch.batch_id, error=str(exc)))
        delay = backoff.delay(attempt, exc.retry_after if isinstance(exc, ServerBusy) else None)
        attempt += 1
        log.info("upload of batch %s failed (%s); retrying in %.1f s", batch.batch_id, exc, delay)
        await anyio.sleep(delay)
        return attempt
    await call_store(store.local_writes, "noting an accepted batch",
                     partial(outbox.accepted, batch_id=batch.batch_id, txid=txid, now=time.time(),
                             shapes=writable))
    return 0


def raise_outcome(outcome: Outcome | None) -> int:
    """The txid of an accepted upload, else the error its outcome stands for."""
    if outcome is None:
        raise NetworkError("the app's process did not answer the upload (it is stopping?)")
    kind, detail, extra = outcome
    if kind == "txid":
        return int(detail)
    if kind == "rejected":
        raise WriteRejected(str(detail), status=extra)
    raise ServerBusy(str(detail), status=0, retry_after=extra)


async def outcome_of(upload: Callable[[Batch], Any], batch: Batch) -> Outcome:
    """Call the app's ``upload(batch)`` (sync ones in a worker thread) and say what came of it."""
    try:
        if _is_async(upload):
            value = await upload(batch)
        else:
            value = await anyio.to_thread.run_sync(upload, batch)
            if hasattr(value, "__await__"):
                value = await value
        return ("txid", writes.parse_txid_answer(value), None)
    except WriteRejected as exc:
        return ("rejected", str(exc), exc.status)
    except ServerBusy as exc:
        return ("retry", str(exc), exc.retry_after)
    except ReplicaError as exc:
        return ("retry", str(exc), None)
    except Exception as exc:  # the app's function failed: its writes wait, and it is tried again
        log.exception("upload(batch) raised; the batch is retried")
        return ("retry", f"upload raised {type(exc).__name__}: {exc}", None)


def _is_async(func: Callable[..., Any]) -> bool:
    call = type(func).__call__ if not inspect.isfunction(func) and not inspect.ismethod(func) else func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)


class HttpUpload:
    """``upload`` for a write endpoint (the daemon's ``[writes] url``): POST the batch as JSON with
    ``headers``; 200 ``{"txid"}`` accepts, a 4xx (not 429) rejects, 429/5xx/network errors retry."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, *, verify: bool | str = True,
                 timeout: float = http.DEFAULT_TIMEOUT, transport: Any = None) -> None:
        self.url = url
        self._headers = dict(headers or {})
        self._tls = http.tls_context(verify) if transport is None else None
        self._timeout = timeout
        self._transport = transport  # tests: an httpx transport

    async def __call__(self, batch: Batch) -> int:
        async with http.new_client(tls=self._tls, transport=self._transport) as client:
            answer = await http.post_json(client, self.url, writes.batch_body(batch), headers=self._headers,
                                          timeout=self._timeout)
        retry_after = parse_retry_after(answer.headers.get("retry-after"), time.time())
        return writes.upload_outcome(answer.status, answer.body, retry_after)
