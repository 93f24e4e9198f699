"""The HTTP rim: send one ``Request`` with httpx and return a plain ``Response``.

This is the one place httpx exceptions become replica errors (``NetworkError``, ``ConfigError``),
chained with ``from``. Bodies are read whole: Electric caps a response at ~10 MB, so memory
stays bounded by the server's chunk size, not by the shape's size.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import urllib.request
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import certifi
import httpcore  # httpx imports it with the first client (~40 ms): here, rather than in a sync
import httpx

from replica import tuning
from replica.errors import ConfigError, NetworkError
from replica.protocol.shapelog import Request, Response
from replica.protocol.wire import EVENT_STREAM
from replica.redaction import has_secret_param, redact_url
from replica.sync.direct import Direct
from replica.sync.sockets import Tuned

__all__ = [
    "DEFAULT_LIVE_TIMEOUT", "DEFAULT_SSE_SILENCE", "DEFAULT_TIMEOUT", "EventStream", "SHAPE_CONNECTIONS", "fetch",
    "new_client", "open_stream", "tls_context",
]

class _RedactSecrets(logging.Filter):
    """httpx logs each request's URL at INFO; Electric's secret rides in that URL's query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(str(arg)) if isinstance(arg, httpx.URL) or _has_secret(arg) else arg
                for arg in record.args
            )
        return True


def _has_secret(value: object) -> bool:
    return isinstance(value, str) and has_secret_param(value)


logging.getLogger("httpx").addFilter(_RedactSecrets())

DEFAULT_TIMEOUT = 60.0  # a non-live chunk: generous for 10 MB over a slow link
DEFAULT_LIVE_TIMEOUT = 45.0  # watchdog for long-polls, which Electric holds ~20 s
DEFAULT_SSE_SILENCE = 30.0  # watchdog for SSE streams, which Electric keeps alive every 21 s


def tls_context(verify: bool | str = True) -> ssl.SSLContext:
    """The TLS settings every client of one Replica shares.

    ``verify`` True: the roots httpx uses (``SSL_CERT_FILE``, ``SSL_CERT_DIR``, else certifi's),
    loaded at the first handshake; a path: that CA bundle (PEM), loaded now, so a bad one is a
    ConfigError before any I/O; False: no verification (never the default).
    """
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"verify: cannot load the CA bundle {verify!r} ({exc}); give a PEM file") from exc
    if verify is False:
        return httpx.create_ssl_context(verify=False)
    context = _RootsOnFirstUse(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    context.verify_mode, context.check_hostname = ssl.CERT_REQUIRED, True
    return context


class _RootsOnFirstUse(ssl.SSLContext):
    """A verifying client context that loads its CA roots at the first handshake.

    Loading certifi's roots costs ~50 ms, which a sync over plain HTTP (a local Electric) never
    needs. Until they load, no certificate verifies: a missed code path fails closed.
    """

    _loaded = False

    def _load_roots(self) -> None:
        with _roots_lock:
            if not self._loaded:
                if os.environ.get("SSL_CERT_FILE"):  # as httpx.create_ssl_context(verify=True)
                    self.load_verify_locations(cafile=os.environ["SSL_CERT_FILE"])
                elif os.environ.get("SSL_CERT_DIR"):
                    self.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
                else:
                    self.load_verify_locations(cafile=certifi.where())
                self._loaded = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_roots()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load_roots()
        return super().wrap_bio(*args, **kwargs)


_roots_lock = threading.Lock()


#: A shape's requests at once: its loop's (a long-poll, a chunk or a held SSE stream), and one
#: catch-up a consistency group may ask of it beside that (follow._Follower._probe).
SHAPE_CONNECTIONS = 2


def new_client(
    *, connections: int = SHAPE_CONNECTIONS, keep: int = 1, tls: ssl.SSLContext | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An AsyncClient for at most ``connections`` concurrent requests, TLS verified by default.

    The sync loop gives each shape its own client: httpcore checks every pooled connection on
    every request, so one pool shared by many long-polling shapes costs CPU that grows with the
    square of their number (measured: ~12 % of a core for 100 idle shapes, mostly that check).
    A shape sends at most SHAPE_CONNECTIONS requests at once, and keeps ``keep`` connections open
    between them: so a process's sockets are bounded by its shapes (docs/design.md §3i). A member of
    a consistency group keeps two: its catch-ups would otherwise each open a connection.
    """
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=min(connections, keep))
    if transport is not None:
        return httpx.AsyncClient(transport=transport, limits=limits, follow_redirects=True)
    verify = tls if tls is not None else tls_context()
    own = httpx.AsyncHTTPTransport(verify=verify, limits=limits)
    pool = getattr(own, "_pool", None)  # httpx offers no public way to pick the network backend
    if tuning.large_reads() and isinstance(pool, httpcore.AsyncConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = Tuned(pool._network_backend)
    # verify and limits again: they also configure the transports of proxies named in the environment.
    client = httpx.AsyncClient(transport=own, verify=verify, limits=limits, follow_redirects=True)
    if isinstance(pool, httpcore.AsyncConnectionPool) and not urllib.request.getproxies():
        _DIRECT[client] = Direct(client, pool)  # no proxy to route through: fetch may skip httpx's client layer
    return client


#: The short path (sync/direct.py) of each client new_client made, when it may take it.
_DIRECT: weakref.WeakKeyDictionary[httpx.AsyncClient, Direct] = weakref.WeakKeyDictionary()


async def fetch(
    client: httpx.AsyncClient,
    url: str,
    request: Request,
    *,
    headers: Mapping[str, str] | None = None,
    params: Sequence[tuple[str, str]] = (),
    timeout: float | None = None,
) -> Response:
    """GET the shape log with the request's parameters (plus ``params``, e.g. ``secret``)."""
    if timeout is None:
        timeout = DEFAULT_LIVE_TIMEOUT if request.live else DEFAULT_TIMEOUT
    direct = _DIRECT.get(client)
    try:
        if direct is not None:
            answer = await direct.get(url, [*request.params, *params], headers, timeout)
            if answer is not None:
                return answer
        # httpx replaces a URL's query with ``params``: keep the URL's own (e.g. ?source_id=…&secret=…)
        base = httpx.URL(url)
        query: list[tuple[str, str | int | float | bool | None]] = [
            *base.params.multi_items(), *request.params, *params
        ]
        async with client.stream(
            "GET",
            base.copy_with(query=None),
            params=query,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        ) as reply:
            # Joined here rather than by reply.aread(): httpx responses sit in reference cycles, and
            # one holding its ~10 MB body would keep it until the cyclic GC runs (RSS grew ~10 MB per chunk).
            body = b"".join([part async for part in reply.aiter_bytes()])
    except _TRANSLATED as exc:
        raise _translated(exc, url, timeout) from exc
    return Response(reply.status_code, {k.lower(): v for k, v in reply.headers.items()}, body)


async def post_json(
    client: httpx.AsyncClient, url: str, body: bytes, *, headers: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT,
) -> Response:
    """POST a JSON body (an upload of local writes); the answer whole, whatever its status."""
    try:
        reply = await client.post(url, content=body, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                  headers={"content-type": "application/json", **headers})
    except _TRANSLATED as exc:
        raise _translated(exc, url, timeout) from exc
    return Response(reply.status_code, {k.lower(): v for k, v in reply.headers.items()}, reply.content)


#: The httpx errors that mean something to the sync loop, and httpcore's (the short path's, which
#: are httpx's before it maps them); anything else they raise is a bug.
_TRANSLATED = (httpx.InvalidURL, httpx.TransportError, httpcore.NetworkError, httpcore.TimeoutException,
               httpcore.ProtocolError, httpcore.UnsupportedProtocol, httpcore.ProxyError)


def _translated(exc: Exception, url: str, timeout: float) -> Exception:
    """The replica error an error of ``_TRANSLATED`` means."""
    if isinstance(exc, httpx.InvalidURL):
        return ConfigError(f"url: {exc}")
    if isinstance(exc, (httpx.UnsupportedProtocol, httpcore.UnsupportedProtocol)):
        return ConfigError(f"url: {exc}; use http:// or https://")
    if isinstance(exc, (httpx.TimeoutException, httpcore.TimeoutException)):
        return NetworkError(f"timed out after {timeout:g} s waiting for {redact_url(url)}")
    if isinstance(exc, (httpx.ConnectError, httpcore.ConnectError)):
        return NetworkError(f"cannot connect to {redact_url(url)}: {_connect_failure(exc)}")
    # Connect errors, resets, and bodies cut short (RemoteProtocolError) all mean: resend.
    return NetworkError(f"{type(exc).__name__} talking to {redact_url(url)}: {_safe(exc)}")


class EventStream:
    """An open answer to a live SSE request (``open_stream``).

    ``head``: its status and headers, with the whole body when it is not an event stream (an
    error, a 409, or JSON from a server that does not stream). ``chunks()`` yields an event
    stream's bytes as they arrive; it ends when the server ends the stream, or when nothing at
    all (not even a keep-alive) arrived for ``silence`` seconds: then ``silent`` is True. When
    not even the headers came in that time, ``silent`` is True from the start and there is no
    answer to read (``head`` is None).
    """

    def __init__(self, reply: httpx.Response | None, head: Response | None, url: str, silence: float) -> None:
        self._reply, self._url, self._silence = reply, url, silence
        self.head = head
        self.events = head is not None and head.status == 200 and head.headers.get(
            "content-type", "").startswith(EVENT_STREAM)
        self.silent = head is None

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._reply is None:
            return
        try:
            async for part in self._reply.aiter_bytes():
                yield part
        except httpx.ReadTimeout:
            self.silent = True  # the watchdog: a proxy holding the stream back, or a dead peer
        except _TRANSLATED as exc:
            raise _translated(exc, self._url, self._silence) from exc


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    url: str,
    request: Request,
    *,
    silence: float,
    headers: Mapping[str, str] | None = None,
    params: Sequence[tuple[str, str]] = (),
) -> AsyncIterator[EventStream]:
    """GET a live SSE request and hold the answer open while the block reads it.

    ``silence`` bounds the wait for the headers and for every read after them (the watchdog).
    """
    base = httpx.URL(url)
    query: list[tuple[str, str | int | float | bool | None]] = [*base.params.multi_items(), *request.params, *params]
    async with AsyncExitStack() as stack:
        try:
            reply = await stack.enter_async_context(client.stream(
                "GET",
                base.copy_with(query=None),
                params=query,
                headers={**(headers or {}), "accept": EVENT_STREAM},
                timeout=httpx.Timeout(silence, connect=min(silence, 10.0)),
            ))
            head = Response(reply.status_code, {k.lower(): v for k, v in reply.headers.items()})
            stream = EventStream(reply, head, url, silence)
            if not stream.events:
                body = b"".join([part async for part in reply.aiter_bytes()])
                stream.head = Response(head.status, head.headers, body)
        except httpx.ReadTimeout:
            stream = EventStream(None, None, url, silence)  # not even the headers: a proxy holding them back
        except _TRANSLATED as exc:
            raise _translated(exc, url, silence) from exc
        yield stream


def _connect_failure(exc: Exception) -> str:
    """Why a connection failed, in words that name the fix (httpx says "All connection attempts failed")."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (nothing listens there); is the server running, and is the port right?"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host name ({cause.strerror}); check the URL"
        cause = cause.__cause__ or cause.__context__
    return _safe(exc)


def _safe(exc: Exception) -> str:
    """An httpx error message with any URL's secrets removed."""
    text = str(exc) or type(exc).__name__
    return "(details withheld: they contain a secret)" if has_secret_param(text) else text
