"""FakeElectric: an in-memory Postgres + Electric that speaks the real ``/v1/shape`` protocol."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from replica.testing.fake import sse, writes
from replica.testing.fake.api import Exchange, ShapeApi, SseHold, transport_fault
from replica.testing.fake.database import Database, Transaction
from replica.testing.fake.faults import SSE_FAULTS, Fault, FaultPlan
from replica.testing.fake.responses import FakeResponse
from replica.testing.fake.writes import WriteEndpoint

__all__ = ["FakeElectric", "ShapeService"]


class _Waiter:
    """One held live request. ``wake`` may be called from any thread and never blocks."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # another anyio backend: only same-thread wake-ups
            self._loop = None

    def wake(self) -> None:
        if self._loop is None:
            self.event.set()
            return
        try:
            self._loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:
            pass  # the loop has closed; nobody is waiting any more


class ShapeService:
    """Electric's ``/v1/shape`` API over a Database of shape logs: request handling and held
    long-polls. ``FakeElectric`` feeds it from in-memory tables, ``PostgresElectric``
    (``replica.testing.pgserver``) from a real Postgres; ``serve`` puts either on a socket."""

    def __init__(
        self, db: Database, *, long_poll_timeout: float, secret: str | None, seed: int, sse_timeout: float = 60.0,
        keepalive_interval: float = 21.0,
    ) -> None:
        if long_poll_timeout <= 0 or sse_timeout <= 0 or keepalive_interval <= 0:
            raise ValueError("long_poll_timeout, sse_timeout and keepalive_interval must be positive")
        self.faults = FaultPlan()
        #: Every request received: (method, path+query, time.monotonic()).
        self.requests: list[tuple[str, str, float]] = []
        self._db = db
        self._db.on_change = self._wake_waiters
        self._api = ShapeApi(self._db, self.faults, long_poll_timeout=long_poll_timeout, secret=secret, seed=seed)
        self._api.sse_timeout, self._api.keepalive_interval = sse_timeout, keepalive_interval
        self._waiters: set[_Waiter] = set()
        self._waiters_lock = threading.Lock()
        #: ``POST /v1/writes`` (local writes), when enabled: ``enable_writes`` (fake/writes.py).
        self.writes: WriteEndpoint | None = None

    def enable_writes(self) -> WriteEndpoint:
        """Serve ``POST /v1/writes`` (off by default); the endpoint, whose settings tests may change."""
        raise NotImplementedError

    def post_writes(self, body: bytes) -> FakeResponse | None:
        """The answer to ``POST /v1/writes`` with ``body``; None while writes are not enabled (404)."""
        return None if self.writes is None else self.writes.respond(body)

    @property
    def long_poll_timeout(self) -> float:
        return self._api.long_poll_timeout

    @long_poll_timeout.setter
    def long_poll_timeout(self, seconds: float) -> None:
        self._api.long_poll_timeout = seconds

    @property
    def sse_timeout(self) -> float:
        """Seconds a live SSE answer stays open (Electric: 60)."""
        return self._api.sse_timeout

    @sse_timeout.setter
    def sse_timeout(self, seconds: float) -> None:
        self._api.sse_timeout = seconds

    @property
    def keepalive_interval(self) -> float:
        """Seconds without traffic after which a live SSE answer sends ``: keep-alive`` (Electric: 21)."""
        return self._api.keepalive_interval

    @keepalive_interval.setter
    def keepalive_interval(self, seconds: float) -> None:
        self._api.keepalive_interval = seconds

    @property
    def chunk_bytes(self) -> int:
        return self._db.chunk_bytes

    @property
    def secret(self) -> str | None:
        return self._api.secret

    @property
    def lsn(self) -> int:
        """The LSN of the last commit (what up-to-date messages report as global_last_seen_lsn)."""
        return self._db.lsn

    @property
    def lag_snapshots(self) -> bool:
        """When True, the first up-to-date after a snapshot that saw the last commit reports the LSN
        before that commit: what Electric does when it reads a snapshot from Postgres before its
        replication stream has processed the latest transaction (the snapshot is ahead of
        ``global_last_seen_lsn``). Later answers report the last commit again."""
        return self._db.lag_snapshots

    @lag_snapshots.setter
    def lag_snapshots(self, on: bool) -> None:
        self._db.lag_snapshots = on

    # --- serving ---

    def respond(self, method: str, target: str, headers: Mapping[str, str] | None = None) -> FakeResponse:
        """Answer one request synchronously (``target`` is path+query or a full URL).

        Never waits: a live request with nothing new gets the long-poll-timeout answer at once.
        The ``reset`` fault raises ConnectionResetError; ``stall`` answers normally.
        """
        ex = self._begin(method, target, headers)
        response = ex.response
        if response is None:
            produced = self._api.produce(ex, may_wait=False)
            if isinstance(produced, SseHold):
                produced = produced.head  # a held stream that ends at once
            assert isinstance(produced, FakeResponse)
            response = produced
        response = self._api.finish(ex, response)
        fault = transport_fault(ex)
        if fault is not None and fault.kind == "reset":
            raise ConnectionResetError("FakeElectric fault: connection reset")
        return response

    async def handler(self, request: httpx.Request) -> httpx.Response:
        """An ``httpx.MockTransport`` handler: holds live requests like the real server."""
        target = request.url.raw_path.decode("ascii")
        if request.method == "POST" and request.url.path == writes.PATH:
            answer = self.post_writes(await request.aread())
            if answer is not None:
                return httpx.Response(answer.status, headers=answer.headers, content=answer.body, request=request)
        response, fault = await self.exchange(request.method, target, dict(request.headers))
        if fault is not None and fault.kind == "stall":
            await anyio.sleep(fault.seconds)
        if fault is not None and fault.kind == "reset":
            raise httpx.ReadError("connection reset by peer (FakeElectric fault)", request=request)
        if response.stream is not None:
            content = _mock_stream(response.body, response.stream, request)
            return httpx.Response(response.status, headers=response.headers, content=content, request=request)
        return httpx.Response(response.status, headers=response.headers, content=response.body, request=request)

    async def exchange(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        *,
        on_wire: bool = False,
    ) -> tuple[FakeResponse, Fault | None]:
        """For server adapters: the response (after any long-poll wait) and the fault, if any,
        that the adapter must apply itself (reset, stall; truncate too when ``on_wire``)."""
        ex = self._begin(method, target, headers)
        response = ex.response if ex.response is not None else await self._produce_waiting(ex)
        response, fault = self._api.finish(ex, response, on_wire=on_wire), transport_fault(ex)
        if fault is not None and fault.kind in SSE_FAULTS:
            if response.status == 200:  # applied here: the adapter just writes the stream
                stream = response.stream or sse.once(response.body)
                until = ex.started + self._api.sse_timeout
                response = response.replace(body=b"", stream=sse.faulty(stream, fault.kind, until=until))
            fault = None
        return response, fault

    def _begin(self, method: str, target: str, headers: Mapping[str, str] | None) -> Exchange:
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.requests.append((method.upper(), target, time.monotonic()))
        return self._api.begin(method, target, dict(headers or {}))

    async def _produce_waiting(self, ex: Exchange) -> FakeResponse:
        while True:
            waiter = _Waiter()
            with self._waiters_lock:
                self._waiters.add(waiter)  # before reading, so no commit can slip by unseen
            try:
                produced = self._api.produce(ex, may_wait=True)
                if isinstance(produced, SseHold):
                    return produced.head.replace(stream=self._held_stream(produced, ex.started))
                if isinstance(produced, FakeResponse):
                    return produced
                remaining = ex.started + produced - time.monotonic()
                if remaining <= 0:
                    final = self._api.produce(ex, may_wait=False)
                    if isinstance(final, SseHold):
                        return final.head.replace(stream=self._held_stream(final, ex.started))
                    assert isinstance(final, FakeResponse)
                    return final
                with anyio.move_on_after(remaining):
                    await waiter.event.wait()
            finally:
                with self._waiters_lock:
                    self._waiters.discard(waiter)

    async def _held_stream(self, hold: SseHold, started: float) -> AsyncGenerator[bytes, None]:
        """A held SSE answer: each batch as it is committed, keep-alives in silences, the end at
        ``sse_timeout`` or when the shape is rotated (the reconnect then gets the 409)."""
        api, since = self._api, hold.since
        deadline = started + api.sse_timeout
        last_sent = time.monotonic()
        while True:
            waiter = _Waiter()
            with self._waiters_lock:
                self._waiters.add(waiter)  # before reading, so no commit can slip by unseen
            try:
                with self._db.lock:
                    if hold.log.expired:
                        return
                    chunk = hold.log.read(since)
                now = time.monotonic()
                if chunk.parts:
                    since, last_sent = chunk.offset, now
                    yield sse.batch_events(chunk)
                    continue
                if now >= deadline:
                    return
                if now - last_sent >= api.keepalive_interval:
                    last_sent = now
                    yield sse.KEEP_ALIVE
                    continue
                with anyio.move_on_after(min(deadline, last_sent + api.keepalive_interval) - now):
                    await waiter.event.wait()
            finally:
                with self._waiters_lock:
                    self._waiters.discard(waiter)

    def _wake_waiters(self) -> None:
        with self._waiters_lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.wake()


class FakeElectric(ShapeService):
    """A protocol-faithful fake Electric server over in-memory tables.

    Mutate tables with ``insert``/``update``/``delete``/``transaction`` (each is one Postgres
    transaction with a txid and a commit LSN), rotate shapes with ``rotate``/``truncate``/
    ``add_column``/``drop_column``, and ask ``rows`` what a shape must contain. Serve it with
    ``respond`` (pure), ``handler`` (for ``httpx.MockTransport``) or ``replica.testing.serve``.

    ``start_lsn`` (an addition to the documented signature) sets the LSN before the first
    commit, e.g. above 2**53 to test clients that parse LSNs as floats. Live SSE answers
    (``live_sse=true``) stay open ``sse_timeout`` seconds and send a keep-alive comment after
    ``keepalive_interval`` seconds without traffic, as Electric does (60 and 21 by default).
    """

    def __init__(
        self,
        *,
        chunk_bytes: int = 10 * 1024 * 1024,
        long_poll_timeout: float = 20.0,
        secret: str | None = None,
        seed: int = 0,
        start_lsn: int = 24_000_000,
        sse_timeout: float = 60.0,
        keepalive_interval: float = 21.0,
    ) -> None:
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        db = Database(chunk_bytes=chunk_bytes, seed=seed, start_lsn=start_lsn, clock=time.time)
        super().__init__(db, long_poll_timeout=long_poll_timeout, secret=secret, seed=seed, sse_timeout=sse_timeout,
                         keepalive_interval=keepalive_interval)

    def enable_writes(self) -> WriteEndpoint:
        """Serve ``POST /v1/writes`` over these tables (off by default); its settings for tests."""
        self.writes = WriteEndpoint(writes.in_memory(self._db))
        return self.writes

    # --- tables ---

    def create_table(
        self,
        name: str,
        columns: Mapping[str, Mapping[str, Any]],
        rows: Sequence[Mapping[str, str | None]] = (),
        schema: str = "public",
    ) -> None:
        """Create ``schema.name``. ``columns`` are electric-schema entries in column order
        (``{"id": {"type": "int4", "pk_index": 0, "not_null": True}, …}``); without any
        ``pk_index`` rows are identified by all their columns. ``rows`` are loaded without a
        transaction (as if they existed before Electric started)."""
        self._db.create_table(name, columns, rows, schema)

    def insert(self, table: str, row: Mapping[str, str | None]) -> int:
        """Insert one row (missing columns are NULL) in its own transaction; returns the commit LSN."""
        with self.transaction() as tx:
            tx.insert(table, row)
        assert tx.lsn is not None
        return tx.lsn

    def update(
        self,
        table: str,
        row: Mapping[str, str | None],
        new: Mapping[str, str | None] | None = None,
    ) -> int:
        """Update one row in its own transaction; returns the commit LSN.

        ``row`` holds the identity columns (the PK; for a table without one, every column) and
        optionally columns to set; ``new`` holds more columns to set, including new PK values:
        ``update("items", {"id": "1"}, new={"id": "9"})`` moves row 1 to key 9, which shapes
        see as ``delete`` (``key_change_to``) + ``insert`` (``key_change_from``).
        """
        with self.transaction() as tx:
            tx.update(table, row, new)
        assert tx.lsn is not None
        return tx.lsn

    def delete(self, table: str, row: Mapping[str, str | None]) -> int:
        """Delete the row with these identity columns in its own transaction; returns the commit LSN."""
        with self.transaction() as tx:
            tx.delete(table, row)
        assert tx.lsn is not None
        return tx.lsn

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One transaction of several operations: one txid, one commit LSN (``tx.lsn`` after the
        block), ops at even op positions. An exception in the block rolls it back. Other threads
        wait while the block runs; do not call ``respond`` from inside it."""
        with self._db.transaction() as tx:
            yield tx

    def rotate(self, table: str) -> None:
        """Give every shape of ``table`` a new handle; the old ones answer 409 (like eviction)."""
        self._db.rotate(table)

    def truncate(self, table: str) -> None:
        """Empty ``table`` and rotate its shapes (Electric answers a TRUNCATE with 409)."""
        self._db.truncate(table)

    def add_column(self, table: str, column: str, spec: Mapping[str, Any], default: str | None = None) -> None:
        """Add a (non-PK) column with ``default`` in every row; a schema change rotates the shapes."""
        self._db.add_column(table, column, spec, default)

    def drop_column(self, table: str, column: str) -> None:
        """Drop a non-PK column; a schema change rotates the shapes."""
        self._db.drop_column(table, column)

    def rows(
        self,
        table: str,
        where: str | None = None,
        params: Sequence[str] | Mapping[Any, str] | None = None,
        columns: Sequence[str] | str | None = None,
    ) -> dict[str, dict[str, str | None]]:
        """The oracle: message key → row (snapshot encoding: bools ``true``/``false``) that a shape
        with this definition must hold now. ``params`` is ``[$1, $2, …]`` or ``{"1": …}``;
        ``columns`` a list of names or the wire ``columns`` text."""
        return self._db.rows(table, where, params, columns)

    def schema(self, table: str) -> dict[str, Any]:
        """The electric-schema object of ``table`` (all columns)."""
        with self._db.lock:
            return self._db.table(table).electric_schema()


async def _mock_stream(body: bytes, stream: AsyncGenerator[bytes, None], request: httpx.Request) -> AsyncIterator[bytes]:
    """A streamed answer through ``httpx.MockTransport``; a cut stream is a broken read, as on a socket."""
    try:
        if body:
            yield body
        async for part in stream:
            yield part
    except sse.StreamCut as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from None
    finally:
        await stream.aclose()
