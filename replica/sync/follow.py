"""One shape's follow loop: request, receive, write, report — and recover from every failure.

``follow`` runs a ``ShapeLog`` against the server until cancelled (or, ``once``, until up to
date). Each response goes to the protocol, which decides what it is before anything converts it;
a snapshot chunk is converted ahead on worker threads (``replica.fast``) and staged in the
writer thread while the next one downloads (``InFlight``). Errors follow ``replica.errors``:
transient ones are resent after a backoff, protocol and store errors rebuild the log from the
stored checkpoint, a refusal stops this shape only (R7). Everything it reports goes through the
``Host`` (the ``Replica``).
"""

from __future__ import annotations

import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

import anyio
import anyio.abc
import httpx

from replica import fast
from replica.errors import NotAShapeLog, ProtocolError, ServerBusy, ShapeError, StoreError, TransientError
from replica.protocol import wire
from replica.protocol.shape import Shape
from replica.protocol.shapelog import Checkpoint, Commit, ShapeLog
from replica.protocol.txids import Visibility
from replica.protocol.writes import Batch
from replica.redaction import Redactor
from replica.store import Applied, Pending, Store
from replica.sync import http
from replica.sync.backoff import Backoff, parse_retry_after
from replica.sync.inflight import InFlight
from replica.sync.stream import LiveMode
from replica.typemap.schema import TableSchema

__all__ = ["AUTH_RETRY_LIMIT", "WRONG_URL_LIMIT", "Coordinator", "Host", "Session", "follow"]

log = logging.getLogger("replica")
#: Retries are logged here, so that a host with its own summary of failures (the daemon) can drop them by name.
retry_log = logging.getLogger("replica.retry")

AUTH_RETRY_LIMIT = 5  # consecutive 401/403 answered with new headers before giving up
QUICK_LIMIT = 5  # long-polls answered at once with nothing, in a row, before backing off (R5)
#: Answers in a row that are no shape log before a shape that never synced stops: one can be a stray
#: (a cache, a portal's first page), three with backoff between them (~1.5 s) are the URL (design.md §9).
WRONG_URL_LIMIT = 3

UnauthorizedHook = Callable[[int], Mapping[str, str] | None | Awaitable[Mapping[str, str] | None]]


class Coordinator(Protocol):
    """The consistency group a shape belongs to (``replica.sync.group.Group``), as its loop sees it."""

    def staged(self, name: str, pending: Pending | None) -> None: ...
    def coming(self, name: str, complete: int) -> None: ...
    def again(self) -> None: ...
    def up_to_date(self, name: str, complete: int | None, sent: float | None = None) -> None: ...
    def refetching(self, name: str) -> None: ...
    def failed(self, name: str) -> None: ...
    def attach(self, name: str, probe: Callable[[int], None]) -> None: ...
    async def visible(self, name: str, complete: int | None) -> bool: ...
    def poke(self) -> None: ...


class Host(Protocol):
    """What a follow loop reports to: the ``Replica`` that runs it."""

    def _set(self, name: str, **changes: Any) -> None: ...
    def _observe(self, kind: str, name: str, **fields: Any) -> None: ...
    async def _notify(self, applied: Applied) -> None: ...
    def _reached(self, name: str) -> None: ...
    def _published(self, applied: list[Applied]) -> None:
        """What one transaction made visible (before its listeners hear of it, one by one)."""
    def _known(self, txids: list[tuple[int, int | None, str, float]], snapshots: list[tuple[str, Visibility]]) -> None:
        """What the store remembers as visible, at start (``Store.visible``)."""
    def _rejected(self, batch: Batch, message: str) -> None:
        """An upload batch the server refused, already rolled back locally (``sync.upload``)."""


@dataclass(frozen=True)
class Session:
    """What every follow loop of one run shares."""

    url: str
    store: Store
    converter: fast.Converter
    backoff: Backoff
    live_timeout: float
    request_timeout: float
    redact: Redactor
    call_store: Callable[..., Awaitable[Any]]  # runs a Store method in the single writer thread
    headers: Callable[[], Awaitable[dict[str, str]]]
    params: Callable[[], Awaitable[list[tuple[str, str]]]]
    on_unauthorized: UnauthorizedHook | None
    live: str = wire.LIVE_LONG_POLL  # how shapes without their own ``live`` follow the live log
    sse_silence: float = http.DEFAULT_SSE_SILENCE  # the SSE watchdog (stream.LiveMode)
    #: Answers that are no shape log, in a row, that stop a shape with no stored position (None: never).
    wrong_url_limit: int | None = WRONG_URL_LIMIT


async def follow(
    session: Session, host: Host, client: httpx.AsyncClient, shape: Shape, *, once: bool,
    group: Coordinator | None = None,
) -> None:
    """Follow ``shape`` until cancelled; with ``once``, until it has published an up-to-date.

    ``group``: the consistency group it belongs to, which publishes what it stages (R11).
    R7: replica's own errors are handled here; anything else is a bug that stops this shape only.
    """
    try:
        try:
            async with anyio.create_task_group() as staging:  # at most one staging step behind the fetch
                await _Follower(session, host, client, shape, once, staging, group).run()
        except BaseExceptionGroup as errors:  # InFlight keeps its errors: only the loop's own can be here
            if len(errors.exceptions) == 1:
                raise errors.exceptions[0] from None
            raise
    except Exception as exc:  # a bug: stop this shape, say so, keep the others going
        message = session.redact(f"internal error ({type(exc).__name__}): {exc}")
        log.error("shape %s stopped: %s", shape.local_name, message)
        log.debug("internal error in shape %s", shape.local_name, exc_info=True)
        host._set(shape.local_name, state="error", error=message)
        if group is not None:
            group.failed(shape.local_name)


class _Follower:
    def __init__(
        self, session: Session, host: Host, client: httpx.AsyncClient, shape: Shape, once: bool,
        staging: anyio.abc.TaskGroup, group: Coordinator | None,
    ) -> None:
        self.session, self.host, self.client, self.shape, self.once = session, host, client, shape, once
        self.name = shape.local_name
        self.staging = staging
        self.group = group
        self.pending: InFlight[Applied] | None = None
        #: Has this URL ever served this shape? (a stored position, or an answer accepted in this run)
        self.proven: bool | None = None
        self.poll: anyio.CancelScope | None = None  # the long-poll in flight, which a probe may drop
        self.refresh = False  # a probe asked for a non-live catch-up next
        self.log: ShapeLog | None = None
        self.probing = False
        self.misses = 0  # catch-ups in a row that got no answer
        self.live = LiveMode(self.name, host, sse=(shape.live or session.live) == wire.LIVE_SSE,
                             silence=session.sse_silence)
        if group is not None:
            group.attach(self.name, self._probe)

    def _probe(self, need: int) -> None:
        """The group asks how far this quiet shape is complete: a non-live catch-up beside the long-poll."""
        if not self.probing:
            self.probing = True
            self.staging.start_soon(self._catch_up, need)

    async def _catch_up(self, need: int) -> None:
        session, shape_log, complete, response = self.session, self.log, None, None
        sent = time.monotonic()
        request = shape_log.probe_request(need) if shape_log is not None else None
        try:
            try:
                if request is not None and shape_log is not None:
                    response = await http.fetch(self.client, session.url, request, headers=await session.headers(),
                                                params=await session.params(), timeout=session.request_timeout)
                    complete = shape_log.probe_answer(response)
            except (TransientError, ProtocolError, ShapeError) as exc:  # the loop's own requests will meet it too
                log.debug("shape %s: a catch-up for its group failed: %s", self.name, self.session.redact(str(exc)))
            if request is not None and (response is None or response.status != 200) and self.group is not None:
                # No answer: the group may have nothing else to wait for (a quiet database), so it asks
                # again, no sooner than the loop would retry (R5).
                self.misses += 1
                busy = None if response is None else parse_retry_after(response.headers.get("retry-after"), time.time())
                await anyio.sleep(session.backoff.delay(self.misses - 1, busy))
                self.group.again()
                return
        finally:
            self.probing = False
        self.misses = 0
        if complete is not None and self.group is not None and shape_log is self.log:
            self.group.up_to_date(self.name, complete, sent)  # the log did not move: nothing else to do
            return
        # It has news (or the probe failed): the log catches up itself. A long-poll (or stream) in flight
        # returns with the news anyway; dropping it for a non-live catch-up would cost this replica that
        # answer's cursor, which the rest of a fleet behind a caching proxy echoes next, so its live URLs
        # would differ from theirs (no collapsing) from then on.
        if self.poll is None:
            self.refresh = True
        if self.group is not None:
            self.group.poke()  # a run(once) member waiting for the group hears of it

    async def run(self) -> None:
        session, name = self.session, self.name
        self.host._set(name, state="connecting")
        shape_log = self.log = await self._rebuild()
        attempt = quick = auth_retries = wrong = 0
        extra_headers: dict[str, str] = {}
        while True:
            if self.refresh:
                self.refresh = False
                shape_log.refresh()
            shape_log.sse = self.live.sse
            request = shape_log.next_request()
            response = None
            sent_at = time.monotonic()
            try:
                headers = {**await session.headers(), **extra_headers}
                timeout = session.live_timeout if request.live else session.request_timeout
                params = await session.params()
                conversion: list[fast.Conversion | None] = []

                def ahead(body: bytes, table: TableSchema, found: list[fast.Conversion | None] = conversion) -> None:
                    # The protocol says this should be a snapshot chunk: convert it while it is validated.
                    found.append(session.converter.start(body, table))

                with anyio.CancelScope() as self.poll:
                    if not request.live:
                        self.poll = None  # only a long-poll (or a held stream) is dropped for a probe
                    if request.sse:  # one held stream; its batches are written as they complete
                        response = await self.live.stream(self.client, session.url, shape_log, request,
                                                          partial(self._write_batch, shape_log),
                                                          opened=partial(self._report, shape_log), headers=headers,
                                                          params=params)
                    else:
                        response = await http.fetch(self.client, session.url, request, headers=headers,
                                                    params=params, timeout=timeout)
                self.poll = None
                if response is None and not request.sse:
                    continue  # a probe dropped the long-poll: catch up instead
                commit = None
                if response is not None:  # an SSE request answered without a stream comes here too
                    self.host._observe("response", name, status=response.status, size=len(response.body))
                    commit = shape_log.receive(response, ahead=ahead)
                    self.proven, wrong = True, 0
                    if response.status in (409, 400):  # a 400 that did not raise: offset out of bounds
                        self.host._observe("refetch", name)
                        if self.group is not None:
                            self.group.refetching(name)
                attempt = 0
                await self._collect()  # the previous staging step first: one writer, log order
                if commit is not None:
                    await self._write(commit, conversion[0] if conversion else None)
            except ShapeError as exc:
                if exc.status in (401, 403) and session.on_unauthorized and auth_retries < AUTH_RETRY_LIMIT:
                    new_headers = await _maybe_await(session.on_unauthorized(exc.status))
                    if new_headers is not None:
                        extra_headers.update(new_headers)
                        session.redact.learn(new_headers.items())
                        await anyio.sleep(session.backoff.delay(auth_retries))
                        auth_retries += 1
                        continue
                await self._stop(exc)
                return
            except (TransientError, ProtocolError, StoreError) as exc:
                wrong = wrong + 1 if isinstance(exc, NotAShapeLog) else 0
                limit = session.wrong_url_limit
                if not self.proven and limit is not None and wrong >= limit:
                    # Nothing ever came from this URL, and it keeps answering with something else.
                    await self._stop(exc)
                    return
                if not isinstance(exc, TransientError):
                    await self._settle()  # the log restarts from the store, so let it finish first
                delay = session.backoff.delay(attempt, _retry_after(exc, response))
                attempt += 1
                message = session.redact(str(exc))
                retry_log.warning("shape %s: %s (retry %d in %.1f s)", name, message, attempt, delay)
                self.host._observe("retry", name, error=message, delay=delay)
                self.host._set(name, state="offline", error=message)
                await anyio.sleep(delay)
                if not isinstance(exc, TransientError):
                    shape_log = self.log = await self._rebuild()  # rows and checkpoint are atomic: disk matches
                continue
            auth_retries = 0
            if commit is None and request.live and not request.sse and time.monotonic() - sent_at < 0.05:
                quick += 1
                if quick >= QUICK_LIMIT:  # R5: never spin, even when each answer looks valid
                    await anyio.sleep(session.backoff.delay(quick - QUICK_LIMIT))
            else:
                quick = 0
            self._report(shape_log)
            if shape_log.live and self.once:
                if self.group is None:
                    return
                while not await self.group.visible(name, shape_log.complete):
                    if self.refresh:
                        break  # the group needs a catch-up of this shape first
                else:
                    return

    async def _write(self, commit: Commit, converted: fast.Conversion | None = None) -> None:
        """Write ``commit``: a staging step runs behind the next fetch; a publish is the group's to
        make, with the others, or made now and announced."""
        session, name = self.session, self.name
        if self.group is not None and commit.up_to_date and commit.complete is not None and commit.changes:
            self.group.coming(name, commit.complete)  # the others' catch-ups overlap this write
        await self._collect()  # the previous staging step first (a stream writes several per answer)
        if not commit.up_to_date:
            # Stage in the writer thread while the next response downloads (SQLite runs
            # without the GIL); its errors surface before anything else is written.
            self.pending = InFlight()
            self.staging.start_soon(self.pending.run, session.call_store, session.store.apply, commit, converted)
        elif self.group is not None:  # the group publishes it, with the others
            with anyio.CancelScope(shield=True):  # a probe dropping a stream must not lose what was staged
                applied, pending = await session.call_store(_stage, session.store, commit, converted, self.shape)
                self.host._observe("commit", name, applied=applied)
                self.group.staged(name, pending)
        else:
            applied = await session.call_store(session.store.apply, commit, converted)
            self.host._observe("commit", name, applied=applied)
            if applied.published:
                self.host._published([applied])
                await self.host._notify(applied)
                self.host._set(name, rows=applied.rows)

    async def _write_batch(self, shape_log: ShapeLog, commit: Commit) -> None:
        await self._write(commit)
        if commit.up_to_date:
            self._report(shape_log)  # a stream lasts a minute: say where it is at each batch

    def _report(self, shape_log: ShapeLog) -> None:
        name = self.name
        self.host._set(name, state="live" if shape_log.live else "syncing", error=None,
                       handle=shape_log.handle, offset=shape_log.offset)
        if shape_log.live and self.group is not None:
            self.group.up_to_date(name, shape_log.complete)  # the group publishes, and says it is synced
        elif shape_log.live:
            self.host._set(name, last_synced_at=time.time())
            self.host._reached(name)

    async def _stop(self, exc: Exception) -> None:
        """Stop this shape for good (R7): its state and the store say why."""
        await self._settle()
        message = self.session.redact(str(exc))
        log.error("shape %s stopped: %s", self.name, message)
        self.host._set(self.name, state="error", error=message)
        if self.group is not None:
            self.group.failed(self.name)
        await self.session.call_store(self.session.store.set_state, self.name, "error", message)

    async def _rebuild(self) -> ShapeLog:
        checkpoint: Checkpoint | None = await self.session.call_store(self.session.store.checkpoint, self.shape)
        if self.proven is None:
            self.proven = checkpoint is not None
        if checkpoint is not None and checkpoint.up_to_date:
            # Resume with one non-live catch-up, as Electric's own client does: it answers at once
            # (with what changed meanwhile, and up-to-date), where a long-poll could hold us ~20 s
            # before the shape counts as synced again.
            checkpoint = replace(checkpoint, up_to_date=False)
        return ShapeLog(self.shape, checkpoint, nonce=secrets.token_hex(4), sse=self.live.sse, url=self.session.url)

    async def _collect(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            applied = await pending.result()
            self.host._observe("commit", self.name, applied=applied)

    async def _settle(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await pending.settle()


def _retry_after(exc: Exception, response: Any) -> float | None:
    if not isinstance(exc, ServerBusy):
        return None
    if exc.retry_after is not None or response is None:
        return exc.retry_after
    return parse_retry_after(response.headers.get("retry-after"), time.time())


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _stage(
    store: Store, commit: Commit, converted: fast.Conversion | None, shape: Shape
) -> tuple[Applied, Pending | None]:
    """Stage ``commit`` for the group and say what waits, in one trip to the writer thread (each trip
    waits for the GIL: measured ~0.5 ms under a group's catch-ups)."""
    return store.apply(commit, converted, defer=True), store.pending(shape)
