"""The sync engine: one run of every shape's follow loop over one Store, in this process.

``run_engine`` opens the store, starts the conversion workers and one httpx client and follow
loop per shape, and closes everything when the loops end or are cancelled. It reports through a
``follow.Host``: the ``Replica`` itself when it runs inline, or the pipe back to the parent when
it runs in a child process (``replica.sync.worker``). Credentials come from ``Auth``: the
Replica's own functions inline, questions over the pipe in a child.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx

from replica import fast
from replica.protocol import wire
from replica.protocol.shape import Shape
from replica.redaction import Redactor
from replica.store import Store
from replica.sync import http
from replica.sync.backoff import Backoff
from replica.sync.follow import WRONG_URL_LIMIT, Host, Session, UnauthorizedHook, follow
from replica.sync.group import Group, group_members
from replica.sync.upload import Upload, upload_loop

__all__ = ["Auth", "SyncConfig", "run_engine"]


@dataclass(frozen=True)
class SyncConfig:
    """What a run syncs, and how. Picklable, except ``transport`` (tests; it keeps a run inline)."""

    db_path: Path
    url: str
    shapes: tuple[Shape, ...]
    secret: str | None = None
    verify: bool | str = True
    backoff: Backoff = Backoff()
    live_timeout: float = http.DEFAULT_LIVE_TIMEOUT
    request_timeout: float = http.DEFAULT_TIMEOUT
    transport: httpx.AsyncBaseTransport | None = None
    live: str = wire.LIVE_LONG_POLL  # how shapes without their own ``live`` receive live changes
    sse_silence: float = http.DEFAULT_SSE_SILENCE
    wrong_url_limit: int | None = WRONG_URL_LIMIT


@dataclass(frozen=True)
class Auth:
    """Where a run's credentials come from: request headers and parameters (asked before every
    request), the 401/403 hook, and the redactor that learns every value they return."""

    headers: Callable[[], Awaitable[dict[str, str]]]
    params: Callable[[], Awaitable[list[tuple[str, str]]]]
    on_unauthorized: UnauthorizedHook | None
    redact: Redactor
    upload: Upload | None = None  # the app's uploader of local writes, as an Outcome (sync/upload.py)


async def run_engine(
    config: SyncConfig, host: Host, auth: Auth, *, once: bool, opened: Callable[[Store | None], None] | None = None
) -> None:
    """Follow every shape until cancelled (``once``: until each is up to date or stopped).

    Each shape's fatal error stops only that shape (R7) and is reported through ``host``;
    errors opening the store or the TLS settings are raised before anything is sent.
    ``opened(store)`` hears of the store once it is open, and ``opened(None)`` once it closes.
    """
    writer = anyio.CapacityLimiter(1)

    async def call_store(func: Callable[..., Any], *args: Any) -> Any:
        # One writer thread at a time; a commit in flight is never abandoned on cancel (R6).
        return await anyio.to_thread.run_sync(func, *args, limiter=writer, abandon_on_cancel=False)

    # One client per shape (see http.new_client), sharing TLS settings; an injected transport is shared.
    tls = http.tls_context(config.verify) if config.transport is None else None  # ConfigError before any I/O
    store: Store = await call_store(Store, config.db_path)
    if opened is not None:
        opened(store)
    host._known(*await call_store(store.visible))
    converter = fast.Converter()
    params = _with_secret(auth.params, config.secret)
    session = Session(config.url, store, converter, config.backoff, config.live_timeout, config.request_timeout,
                      auth.redact, call_store, auth.headers, params, auth.on_unauthorized, config.live,
                      config.sse_silence, config.wrong_url_limit)
    count = len(config.shapes)
    shared = None
    if config.transport is not None:
        shared = http.new_client(connections=count * http.SHAPE_CONNECTIONS, transport=config.transport)
    groups = _groups(config.shapes, session, host)
    clients = [shared or http.new_client(tls=tls, keep=http.SHAPE_CONNECTIONS if s.local_name in groups else 1)
               for s in config.shapes]
    try:
        async with anyio.create_task_group() as coordinators:
            for group in {id(g): g for g in groups.values()}.values():
                coordinators.start_soon(group.run)
            if auth.upload is not None and any(s.writable for s in config.shapes):
                coordinators.start_soon(upload_loop, store, call_store, auth.upload, config.shapes, config.backoff,
                                        host._rejected)
            async with anyio.create_task_group() as tg:
                for shape, client in zip(config.shapes, clients, strict=True):
                    tg.start_soon(partial(follow, session, host, client, shape, once=once,
                                          group=groups.get(shape.local_name)))
            coordinators.cancel_scope.cancel()  # every member has stopped
    finally:
        with anyio.CancelScope(shield=True):  # a cancelled close would leave sockets open
            for client in {id(c): c for c in clients}.values():
                await client.aclose()
            await anyio.to_thread.run_sync(converter.close)
            await call_store(store.close)
            if opened is not None:
                opened(None)


def _groups(shapes: tuple[Shape, ...], session: Session, host: Host) -> dict[str, Group]:
    """Each shape's consistency group, by local name; a group of one needs no coordinator."""
    found = {}
    for name, group_shapes in group_members(shapes).items():
        group = Group(name, group_shapes, session, host)
        found.update({shape.local_name: group for shape in group_shapes})
    return found


def _with_secret(
    params: Callable[[], Awaitable[list[tuple[str, str]]]], secret: str | None
) -> Callable[[], Awaitable[list[tuple[str, str]]]]:
    if secret is None:
        return params

    async def with_secret() -> list[tuple[str, str]]:
        return [*await params(), ("secret", secret)]

    return with_secret
