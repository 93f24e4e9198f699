"""The sync loop: follow each shape's log over HTTP and apply it to SQLite.

``Replica`` supervises one follow task and httpx client per shape, and the single writer.
Use it from asyncio (``async with Replica(...)`` / ``await replica.run()``) or from threaded code
(``start()`` / ``wait_until_synced()`` / ``stop()``, which run the loop in a background thread).
"""

from __future__ import annotations

import inspect
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import httpx

from replica.sync import http
from replica.protocol import answers as replies
from replica.protocol import wire
from replica.sync.backoff import Backoff, parse_retry_after
from replica.errors import ConfigError, ProtocolError, ServerBusy, ShapeError, StoreError, TransientError
from replica.protocol.shapelog import Checkpoint, Shape, ShapeLog
from replica.sync.events import ShapeState, SyncEvent
from replica.sync.inflight import InFlight
from replica.store.store import Applied, Store

__all__ = ["Replica", "ShapeState", "SyncEvent"]

log = logging.getLogger("replica")

HeaderValue = str | Callable[[], str] | Callable[[], Awaitable[str]]
UnauthorizedHook = Callable[[int], Mapping[str, str] | None | Awaitable[Mapping[str, str] | None]]
AUTH_RETRY_LIMIT = 5  # consecutive 401/403 answered with new headers before giving up


class Replica:
    """Keep SQLite tables in ``db_path`` equal to the shapes served at ``url`` (…/v1/shape).

    ``shapes``: Shape values (or one). ``secret``: Electric's API secret, sent as a parameter.
    ``headers`` / ``params``: extra request headers and query parameters; a value may be a
    function (sync or async) called before every request, e.g. to refresh a token.
    ``on_unauthorized(status)``: called on 401/403; return new headers to retry, or None to stop.
    ``on_commit(applied)``: called after every commit that made rows visible.
    ``live_timeout``: the watchdog on long-polls (Electric holds them ~20 s); ``request_timeout``
    bounds every other request. ``verify``: TLS verification (True) or a CA bundle path.
    ``overrides``: per local table, per-column type overrides (``{"items": {"price": "real"}}``).
    ``observer(event)``: called with every ``SyncEvent`` from the sync loop (keep it quick).
    """

    def __init__(
        self,
        db_path: str | Path,
        url: str,
        shapes: Shape | Iterable[Shape],
        *,
        secret: str | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
        params: Mapping[str, HeaderValue] | None = None,
        on_unauthorized: UnauthorizedHook | None = None,
        on_commit: Callable[[Applied], Any] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str = True,
        backoff: Backoff | None = None,
        live_timeout: float = http.DEFAULT_LIVE_TIMEOUT,
        request_timeout: float = http.DEFAULT_TIMEOUT,
        overrides: Mapping[str, Mapping[str, str]] | None = None,
        observer: Callable[[SyncEvent], None] | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.url = url
        self.shapes = (shapes,) if isinstance(shapes, Shape) else tuple(shapes)
        if not self.shapes:
            raise ConfigError("shapes: give at least one shape")
        names = [s.local_name for s in self.shapes]
        if len(set(names)) != len(names):
            raise ConfigError(f"shapes: two shapes share a local table name: {sorted(names)}")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"url: must start with http:// or https://, got {wire.redact_url(url)[:40]!r}")
        self._secret = secret
        # No secret appears in a log line, status or error (an error page may echo the request).
        self._redact = replies.Redactor(url, secret, [*(headers or {}).items(), *(params or {}).items()])
        self._headers = dict(headers or {})
        self._params = dict(params or {})
        self._on_unauthorized = on_unauthorized
        self._listeners: list[Callable[[Applied], Any]] = [on_commit] if on_commit else []
        self._transport = transport
        self._verify = verify
        self._backoff = backoff or Backoff()
        self._live_timeout = live_timeout
        self._request_timeout = request_timeout
        self._overrides = overrides
        self._observer = observer
        self._states = {name: ShapeState(name, "stopped") for name in names}
        self._synced = threading.Event()
        self._reached: set[str] = set()
        self._streams: list[anyio.abc.ObjectSendStream[Applied]] = []
        self._store: Store | None = None
        self._writer = anyio.CapacityLimiter(1)
        self._cancel: anyio.CancelScope | None = None
        self._portal_cm: Any = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._future: Future[None] | None = None

    # --- asyncio API ---

    async def run(self, *, once: bool = False) -> None:
        """Sync until cancelled (or, with ``once``, until every shape has committed an up-to-date).

        Shapes that fail fatally stop alone (their state says why); ``run`` returns when all
        shapes have stopped. With ``once``, raises the first fatal ShapeError, if any.
        """
        # One client per shape (see http.new_client), sharing TLS settings; an injected transport is shared.
        tls = http.tls_context(self._verify) if self._transport is None else None  # ConfigError before any I/O
        self._store = await self._call_store(lambda: Store(self.db_path, overrides=self._overrides))
        self._synced.clear()
        self._reached.clear()
        shared = http.new_client(connections=len(self.shapes), transport=self._transport) if self._transport else None
        clients = [shared or http.new_client(tls=tls) for _ in self.shapes]
        try:
            with anyio.CancelScope() as self._cancel:
                async with anyio.create_task_group() as tg:
                    for shape, client in zip(self.shapes, clients, strict=True):
                        tg.start_soon(self._isolated, client, shape, once)
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled close would leave sockets open
                for client in {id(c): c for c in clients}.values():
                    await client.aclose()
            for name, state in self._states.items():
                if state.state != "error":
                    self._states[name] = replace(state, state="stopped")
            for stream in self._streams:
                stream.close()
            store, self._store = self._store, None
            await self._call_store(store.close)
        if once:
            errors = [s.error for s in self._states.values() if s.state == "error"]
            if errors:
                raise ShapeError(errors[0] or "shape failed")

    async def __aenter__(self) -> Replica:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self.run)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        self._stop_soon()
        return await self._tg.__aexit__(*exc_info)

    async def synced(self) -> None:
        """Wait until every shape has committed its first up-to-date."""
        while not self._synced.is_set():
            await anyio.sleep(0.01)

    async def changes(self) -> AsyncIterator[Applied]:
        """Every commit that made rows visible, in order, while you iterate (back-pressures the sync)."""
        send, receive = anyio.create_memory_object_stream[Applied](100)
        self._streams.append(send)
        try:
            async with receive:
                async for applied in receive:
                    yield applied
        finally:
            self._streams.remove(send)
            send.close()

    def add_listener(self, callback: Callable[[Applied], Any]) -> None:
        """Call ``callback(applied)`` after each visible commit (from the sync loop: keep it quick)."""
        self._listeners.append(callback)

    def status(self) -> list[ShapeState]:
        return [self._states[s.local_name] for s in self.shapes]

    # --- threaded API ---

    def start(self) -> None:
        """Run the sync loop in a background thread (for Qt, Tk, scripts)."""
        if self._portal is not None:
            raise RuntimeError("already started")
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._future = self._portal.start_task_soon(self.run)

    def wait_until_synced(self, timeout: float | None = None) -> bool:
        """Block until every shape has committed its first up-to-date; False on timeout or failure."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._synced.wait(0.05):
            if self._future is not None and self._future.done():
                return self._synced.is_set()
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop syncing; an in-flight commit finishes first. Re-raises a crash of the loop."""
        if self._portal is None:
            return
        try:
            self._portal.call(self._stop_soon)
            assert self._future is not None
            self._future.result(timeout)
        finally:
            self._portal_cm.__exit__(None, None, None)
            self._portal = self._portal_cm = self._future = None

    def _stop_soon(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    # --- one shape ---

    async def _isolated(self, client: httpx.AsyncClient, shape: Shape, once: bool) -> None:
        """R7: replica's own errors are handled in the loop; anything else is a bug that stops this shape only."""
        try:
            await self._follow(client, shape, once)
        except Exception as exc:
            message = self._redact(f"internal error ({type(exc).__name__}): {exc}")
            log.error("shape %s stopped: %s", shape.local_name, message)
            log.debug("internal error in shape %s", shape.local_name, exc_info=True)
            self._set(shape.local_name, state="error", error=message)

    async def _follow(self, client: httpx.AsyncClient, shape: Shape, once: bool) -> None:
        try:
            async with anyio.create_task_group() as staging:  # at most one staging step behind the fetch
                await self._follow_log(client, shape, once, staging)
        except BaseExceptionGroup as group:  # InFlight keeps its errors: only the loop's own can be here
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _follow_log(
        self, client: httpx.AsyncClient, shape: Shape, once: bool, staging: anyio.abc.TaskGroup
    ) -> None:
        name = shape.local_name
        pending: InFlight | None = None
        self._set(name, state="connecting")
        checkpoint = await self._call_store(self._require_store().checkpoint, shape)
        shape_log = self._new_log(shape, checkpoint, once)
        attempt = 0
        quick = 0  # long-polls in a row answered at once with nothing: a misbehaving server or proxy
        auth_retries = 0
        extra_headers: dict[str, str] = {}
        while True:
            request = shape_log.next_request()
            response = None
            sent_at = time.monotonic()
            try:
                headers = {**await self._resolve(self._headers), **extra_headers}
                timeout = self._live_timeout if request.live else self._request_timeout
                params = await self._request_params()
                response = await http.fetch(client, self.url, request, headers=headers, params=params, timeout=timeout)
                self._observe("response", name, status=response.status, size=len(response.body))
                # Snapshot rows convert on worker threads while the body is validated and the writer catches up.
                ahead = self._require_store().convert_ahead(shape, shape_log.snapshot_schema(response), response.body)
                commit = shape_log.receive(response)
                if response.status in (409, 400):  # a 400 that did not raise: offset out of bounds
                    self._observe("refetch", name)
                attempt = 0
                if pending is not None:  # the previous staging step first: one writer, log order
                    applied, pending = await pending.result(), None
                    self._observe("commit", name, applied=applied)
                if commit is not None and not commit.up_to_date:
                    # Stage in the writer thread while the next response downloads (SQLite runs
                    # without the GIL); its errors surface before anything else is written.
                    pending = InFlight()
                    staging.start_soon(pending.run, self._call_store, self._require_store().apply, commit, ahead)
                elif commit is not None:
                    applied = await self._call_store(self._require_store().apply, commit, ahead)
                    self._observe("commit", name, applied=applied)
                    if applied.published:
                        await self._notify(applied)
                        self._set(name, rows=applied.rows)
            except ShapeError as exc:
                if exc.status in (401, 403) and self._on_unauthorized and auth_retries < AUTH_RETRY_LIMIT:
                    new_headers = await _maybe_await(self._on_unauthorized(exc.status))
                    if new_headers is not None:
                        extra_headers.update(new_headers)
                        self._redact.learn(new_headers.items())
                        await anyio.sleep(self._backoff.delay(auth_retries))
                        auth_retries += 1
                        continue
                if pending is not None:
                    await pending.settle()
                message = self._redact(str(exc))
                log.error("shape %s stopped: %s", name, message)
                self._set(name, state="error", error=message)
                await self._call_store(self._require_store().set_state, name, "error", message)
                return
            except (TransientError, ProtocolError, StoreError) as exc:
                if pending is not None and not isinstance(exc, TransientError):
                    await pending.settle()  # the log restarts from the store, so let it finish first
                    pending = None
                retry_after = None
                if isinstance(exc, ServerBusy):
                    retry_after = exc.retry_after
                    if retry_after is None and response is not None:
                        retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
                delay = self._backoff.delay(attempt, retry_after)
                attempt += 1
                message = self._redact(str(exc))
                log.warning("shape %s: %s (retry %d in %.1f s)", name, message, attempt, delay)
                self._observe("retry", name, error=message, delay=delay)
                self._set(name, state="offline", error=message)
                await anyio.sleep(delay)
                if not isinstance(exc, TransientError):
                    # Rows and checkpoint are atomic, so the stored checkpoint matches the disk.
                    checkpoint = await self._call_store(self._require_store().checkpoint, shape)
                    shape_log = self._new_log(shape, checkpoint, once)
                continue
            auth_retries = 0
            if commit is None and request.live and time.monotonic() - sent_at < 0.05:
                quick += 1
                if quick >= 5:  # R5: never spin, even when each answer looks valid
                    await anyio.sleep(self._backoff.delay(quick - 5))
            else:
                quick = 0
            self._set(name, state="live" if shape_log.live else "syncing", error=None)
            self._set(name, handle=shape_log.handle, offset=shape_log.offset)
            if shape_log.live:
                self._set(name, last_synced_at=time.time())
                self._mark_synced(name)
                if once:
                    return

    def _new_log(self, shape: Shape, checkpoint: Checkpoint | None, once: bool) -> ShapeLog:
        if once and checkpoint is not None and checkpoint.up_to_date:
            # One non-live catch-up answers at once; a long-poll could hold us ~20 s.
            checkpoint = replace(checkpoint, up_to_date=False)
        return ShapeLog(shape, checkpoint, nonce=secrets.token_hex(4))

    def _mark_synced(self, name: str) -> None:
        self._reached.add(name)
        if len(self._reached) == len(self.shapes):
            self._synced.set()

    def _set(self, name: str, **changes: Any) -> None:
        old = self._states[name]
        self._states[name] = replace(old, **changes)
        if self._states[name].state != old.state:
            self._observe("state", name, shape=self._states[name])

    def _observe(self, kind: str, name: str, **fields: Any) -> None:
        if self._observer is None:
            return
        try:
            self._observer(SyncEvent(kind, name, **fields))
        except Exception:  # an observer's bug must not stop the sync
            log.exception("sync observer failed")

    async def _notify(self, applied: Applied) -> None:
        for callback in list(self._listeners):
            try:
                await _maybe_await(callback(applied))
            except Exception:  # a listener's bug must not stop the sync
                log.exception("on_commit listener failed")
        for stream in list(self._streams):
            try:
                await stream.send(applied)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass

    async def _request_params(self) -> list[tuple[str, str]]:
        params = list((await self._resolve(self._params)).items())
        if self._secret is not None:
            params.append(("secret", self._secret))
        return params

    async def _resolve(self, values: Mapping[str, HeaderValue]) -> dict[str, str]:
        resolved = {}
        for key, value in values.items():
            if isinstance(value, str):
                resolved[key] = value
            else:  # a function: a refreshed token, whatever its name
                resolved[key] = str(await _maybe_await(value()))
                self._redact.refreshed(resolved[key])
        return resolved

    def _require_store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the replica is not running")
        return self._store

    async def _call_store(self, func: Callable[..., Any], *args: Any) -> Any:
        # One writer thread at a time; a commit in flight is never abandoned on cancel (R6).
        return await anyio.to_thread.run_sync(func, *args, limiter=self._writer, abandon_on_cancel=False)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value

