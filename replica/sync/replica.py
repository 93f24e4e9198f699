"""``Replica``: keep SQLite tables equal to Electric shapes, from asyncio or from threaded code.

It supervises one follow loop (``replica.sync.follow``) and httpx client per shape, the single
writer, the conversion workers, status and notifications. Use it from asyncio
(``async with Replica(...)`` / ``await replica.run()``) or from threaded code (``with
Replica(...)`` or ``start()`` / ``wait_until_synced()`` / ``stop()``, which run the loop in a
background thread).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import httpx
from anyio.streams.memory import MemoryObjectSendStream

from replica.errors import ConfigError, ShapeError
from replica.protocol import wire
from replica.protocol.shape import Shape
from replica.protocol.txids import Visibility
from replica.protocol.writes import Batch
from replica.redaction import Redactor, redact_url
from replica.status import ShapeStatus
from replica.store import Applied, Store
from replica.sync import http
from replica.sync.backoff import Backoff
from replica.sync.child import can_run_child, run_child
from replica.sync.engine import Auth, SyncConfig, run_engine
from replica.sync.events import SyncEvent
from replica.sync.follow import WRONG_URL_LIMIT, UnauthorizedHook
from replica.sync.upload import outcome_of
from replica.sync.visible import Seen, Visible

__all__ = ["CHILD", "INLINE", "Replica"]

CHILD, INLINE = "child", "inline"

log = logging.getLogger("replica")

HeaderValue = str | Callable[[], str] | Callable[[], Awaitable[str]]
Listener = Callable[[Applied], Any]


class Replica:
    """Keep SQLite tables in ``db_path`` equal to the shapes served at ``url`` (…/v1/shape).

    ``shapes``: Shape values (or one). ``secret``: Electric's API secret, sent as a parameter.
    ``headers`` / ``params``: extra request headers and query parameters; a value may be a
    function (sync or async) called before every request, e.g. to refresh a token.
    ``on_unauthorized(status)``: called on 401/403; return new headers to retry, or None to stop.
    ``on_commit(applied)``: called after every commit that made rows visible (``add_listener``).
    ``live_timeout``: the watchdog on long-polls (Electric holds them ~20 s); ``request_timeout``
    bounds every other request. ``verify``: TLS verification (True) or a CA bundle path.
    ``observer(event)``: called with every ``SyncEvent`` from the sync loop (keep it quick).
    ``process``: where the writer runs. ``"child"`` (the default where it can): a child process, so
    this process may read the database with any SQLite library (stdlib ``sqlite3``, SQLAlchemy,
    pandas) and the sync's CPU stays off its GIL; ``"inline"``: this process (read only through
    ``replica.connect()`` then). A ``transport`` (tests) or an in-memory database runs inline.
    ``live``: how shapes without their own ``live`` receive live changes: ``"long-poll"`` (the
    default) or ``"sse"`` (one held Server-Sent Events stream per shape; a shape whose streams
    keep failing long-polls instead, see ``status()``'s ``live_mode``). ``sse_silence``: seconds an
    SSE stream may stay silent (Electric sends a keep-alive every 21 s) before it is given up.
    ``wrong_url_limit``: a shape with no stored position stops (state ``error``) after this many
    answers in a row that are no shape log (a wrong URL: the error names the right one); None
    retries forever. A shape that synced before always retries (such a page may be a proxy's).
    ``upload(batch)`` (sync or async): uploads a batch of local writes to writable shapes
    (``Shape(writable=True)``) and returns the Postgres txid that applied it, or raises
    ``WriteRejected``; any other error is retried with backoff. ``on_write_rejected(batch, message)``
    hears of each batch the server refused, once it is rolled back locally (design.md §3j).
    ``overrides``: deprecated; give each Shape its ``types`` instead.
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
        on_commit: Listener | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str = True,
        backoff: Backoff | None = None,
        live_timeout: float = http.DEFAULT_LIVE_TIMEOUT,
        request_timeout: float = http.DEFAULT_TIMEOUT,
        overrides: Mapping[str, Mapping[str, str]] | None = None,
        observer: Callable[[SyncEvent], None] | None = None,
        process: str | None = None,
        live: str = wire.LIVE_LONG_POLL,
        sse_silence: float = http.DEFAULT_SSE_SILENCE,
        wrong_url_limit: int | None = WRONG_URL_LIMIT,
        upload: Callable[[Batch], Any] | None = None,
        on_write_rejected: Callable[[Batch, str], Any] | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.url = url
        self.shapes = _with_types((shapes,) if isinstance(shapes, Shape) else tuple(shapes), overrides)
        if not self.shapes:
            raise ConfigError("shapes: give at least one shape")
        names = [s.local_name for s in self.shapes]
        if len(set(names)) != len(names):
            raise ConfigError(f"shapes: two shapes share a local table name: {sorted(names)}")
        if live not in wire.LIVE_MODES:
            raise ConfigError(f"live: must be one of {', '.join(wire.LIVE_MODES)}, got {live!r}")
        if not sse_silence > 0:
            raise ConfigError(f"sse_silence: must be a positive number of seconds, got {sse_silence!r}")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"url: must start with http:// or https://, got {redact_url(url)[:40]!r}")
        if wrong_url_limit is not None and wrong_url_limit < 1:
            raise ConfigError(f"wrong_url_limit: give a count of at least 1, or None, got {wrong_url_limit!r}")
        self._config = SyncConfig(self.db_path, url, self.shapes, secret, verify, backoff or Backoff(), live_timeout,
                                  request_timeout, transport, live, sse_silence, wrong_url_limit)
        self.process = _where(process, self._config)
        # No secret appears in a log line, status or error (an error page may echo the request).
        self._redact = Redactor([secret], url=url, named=[*(headers or {}).items(), *(params or {}).items()])
        self._headers = dict(headers or {})
        self._params = dict(params or {})
        self._on_unauthorized = on_unauthorized
        self._upload, self._on_write_rejected = upload, on_write_rejected
        self._listeners: list[Listener] = [on_commit] if on_commit else []
        self._observer = observer
        self._states = {name: ShapeStatus(name, "stopped") for name in names}
        self._synced = threading.Event()
        self._synced_waiters: list[anyio.Event] = []
        self._up_to_date: set[str] = set()
        self._streams: list[MemoryObjectSendStream[Applied]] = []
        self._cancel: anyio.CancelScope | None = None
        self._store: Store | None = None
        self._visible = Visible()
        self._portal_cm: Any = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._future: Future[None] | None = None

    # --- asyncio API ---

    async def run(self, *, once: bool = False) -> None:
        """Sync until cancelled (or, with ``once``, until every shape has committed an up-to-date).

        Shapes that fail fatally stop alone (their state says why); ``run`` returns when all
        shapes have stopped. With ``once``, raises the first fatal ShapeError, if any.
        """
        self._synced.clear()
        self._up_to_date.clear()
        auth = Auth(self._request_headers, self._request_params, self._on_unauthorized, self._redact,
                    None if self._upload is None else partial(outcome_of, self._upload))
        try:
            with anyio.CancelScope() as self._cancel:
                if self.process == CHILD:
                    await run_child(self._config, self, auth, once=once)
                else:
                    await run_engine(self._config, self, auth, once=once, opened=self._opened)
        finally:
            for name, state in self._states.items():
                if state.state != "error":
                    self._states[name] = replace(state, state="stopped")
            for stream in self._streams:
                stream.close()
            self._wake_waiters()
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

    async def synced(self, timeout: float | None = None) -> bool:
        """Wait until every shape has committed its first up-to-date: True; False if ``timeout``
        seconds pass first, or the run ends without it (every shape stopped by an error)."""
        if not self._synced.is_set():
            waiter = anyio.Event()
            self._synced_waiters.append(waiter)
            try:
                with anyio.move_on_after(timeout):
                    await waiter.wait()
            finally:
                self._synced_waiters.remove(waiter)
        return self._synced.is_set()

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

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(applied)`` after each visible commit (from the sync loop: keep it quick)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        """Stop calling ``callback`` (added with ``add_listener`` or given as ``on_commit``); ValueError if unknown."""
        self._listeners.remove(callback)

    def status(self) -> list[ShapeStatus]:
        return [self._states[s.local_name] for s in self.shapes]

    async def txid_synced(self, txid: int | str, timeout: float | None = None) -> bool:
        """Wait until readers see the Postgres transaction ``txid`` (your own write's
        ``pg_current_xact_id()``): a published commit applied a change of it, or a published snapshot
        contains it. False if ``timeout`` seconds pass first (a transaction that changed no synced row
        never appears). ValueError if ``txid`` is not a transaction id."""
        return await self._visible.wait(txid, timeout) is not None

    def wait_until_txid(self, txid: int | str, timeout: float | None = None) -> bool:
        """``txid_synced`` for threaded code: block until readers see ``txid``; False on timeout."""
        return self._visible.wait_blocking(txid, timeout) is not None

    def txid_seen(self, txid: int | str) -> Seen | None:
        """The shapes (and commit LSN) in which readers see ``txid`` now, else None."""
        return self._visible.seen(txid)

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

    def __enter__(self) -> Replica:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _stop_soon(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    # --- what the follow loops report (replica.sync.follow.Host) ---

    def _set(self, name: str, **changes: Any) -> None:
        old = self._states[name]
        self._states[name] = new = replace(old, **changes)
        if new.state != old.state:
            self._observe("state", name, shape=new)

    def _observe(self, kind: str, name: str, **fields: Any) -> None:
        if self._observer is None:
            return
        try:
            self._observer(SyncEvent(kind, name, **fields))
        except Exception:  # an observer's bug must not stop the sync
            log.exception("sync observer failed")

    def _published(self, applied: list[Applied]) -> None:
        self._visible.published(applied)

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

    def _opened(self, store: Store | None) -> None:
        self._store = store  # inline only: the writer's Store, for diagnostics and fault injection in tests

    def _known(self, txids: list[tuple[int, int | None, str, float]], snapshots: list[tuple[str, Visibility]]) -> None:
        self._visible.add([(txid, lsn, name) for txid, lsn, name, _at in txids], snapshots)

    def _rejected(self, batch: Batch, message: str) -> None:
        if self._on_write_rejected is not None:
            try:
                self._on_write_rejected(batch, message)
            except Exception:  # the app's bug must not stop the sync
                log.exception("on_write_rejected failed")
        for name in dict.fromkeys(change.name for change in batch.changes):
            if name in self._states:
                self._set(name, write_rejected=message)
            self._observe("write_rejected", name, error=message)

    @property
    def observing(self) -> bool:
        return self._observer is not None

    def _reached(self, name: str) -> None:
        self._up_to_date.add(name)
        if len(self._up_to_date) == len(self.shapes) and not self._synced.is_set():
            self._synced.set()
            self._wake_waiters()

    # --- helpers ---

    def _wake_waiters(self) -> None:
        for waiter in self._synced_waiters:
            waiter.set()

    async def _request_params(self) -> list[tuple[str, str]]:
        return list((await self._resolve(self._params)).items())

    async def _request_headers(self) -> dict[str, str]:
        return await self._resolve(self._headers)

    async def _resolve(self, values: Mapping[str, HeaderValue]) -> dict[str, str]:
        resolved = {}
        for key, value in values.items():
            if isinstance(value, str):
                resolved[key] = value
            else:  # a function: a refreshed token, whatever its name
                resolved[key] = str(await _maybe_await(value()))
                self._redact.refreshed(resolved[key])
        return resolved


def _where(process: str | None, config: SyncConfig) -> str:
    """The process the writer runs in: as asked, else a child wherever one can do the job."""
    inline_only = config.transport is not None or str(config.db_path) in ("", ":memory:")
    if process is None:
        return INLINE if inline_only or not can_run_child() else CHILD
    if process not in (CHILD, INLINE):
        raise ConfigError(f"process: must be 'child' or 'inline', got {process!r}")
    if process == CHILD and config.transport is not None:
        raise ConfigError("process: a transport object cannot cross into a child process; use process='inline'")
    if process == CHILD and inline_only:
        raise ConfigError("process: an in-memory database lives in one process; use process='inline'")
    if process == CHILD and not can_run_child():
        raise ConfigError("process: this platform cannot run the sync in a child process; use process='inline'")
    return process


def _with_types(shapes: tuple[Shape, ...], overrides: Mapping[str, Mapping[str, str]] | None) -> tuple[Shape, ...]:
    """The old ``overrides={table: {column: type}}`` keyword, moved onto each Shape's ``types``."""
    if not overrides:
        return shapes
    warnings.warn(
        "Replica(overrides=…) is deprecated: give each Shape its types, e.g. Shape('items', types={'price': 'real'})",
        DeprecationWarning,
        stacklevel=3,
    )
    unknown = set(overrides) - {s.local_name for s in shapes}
    if unknown:
        raise ConfigError(f"overrides: no shape syncs into {sorted(unknown)}")
    return tuple(replace(s, types=tuple({**s.overrides, **overrides[s.local_name]}.items()))
                 if s.local_name in overrides else s for s in shapes)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
