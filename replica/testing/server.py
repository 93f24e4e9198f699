"""FakeElectric on real loopback sockets: HTTP/1.1 over anyio streams with h11.

Keep-alive, chunked 200 bodies (as Electric streams them, in 64 KiB pieces), any number of
concurrent long-polls and held Server-Sent Events answers (one task per connection; an SSE
answer's pieces are written as they come), byte-level faults, and shutdown by cancellation: leaving ``serve`` closes the listener and every connection.

Connections are accepted by our own loop (wait readable, then a non-blocking ``accept``), not by
``SocketListener.serve``: on CPython 3.11 asyncio's ``sock_accept`` can accept a connection for a
waiter that was just cancelled and then drop the socket (``InvalidStateError``), leaking it when a
client connects while ``serve`` shuts down. Here nothing is accepted after cancellation, and every
accepted socket is owned by a task that closes it.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.from_thread
import h11

from replica.testing.fake.faults import Fault
from replica.testing.fake.responses import FakeResponse
from replica.testing.fake.service import ShapeService
from replica.testing.fake.sse import StreamCut
from replica.testing.fake.writes import PATH

__all__ = ["Server", "serve", "serve_in_thread"]

_PIECE = 64 * 1024
_RECEIVE = 64 * 1024
# Connections errors that just end a connection (the client went away).
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError, OSError)


@dataclass(frozen=True)
class Server:
    """A running server: ``url`` is the shape endpoint, ``base_url`` the origin."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/shape"


@asynccontextmanager
async def serve(fake: ShapeService, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Server]:
    """Serve ``fake`` (a FakeElectric, or any ShapeService such as PostgresElectric) on
    ``host:port`` (0 = any free port) until the block exits."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound_host, bound_port = listener.extra(anyio.abc.SocketAttribute.local_address)[:2]
    # A MultiListener (a name resolving to several addresses) holds one listener per address.
    parts = getattr(listener, "listeners", [listener])
    async with listener, anyio.create_task_group() as tg:
        for part in parts:
            tg.start_soon(_accept_loop, fake, part.extra(anyio.abc.SocketAttribute.raw_socket), tg)
        try:
            yield Server(str(bound_host), int(bound_port))
        finally:
            tg.cancel_scope.cancel()


@contextmanager
def serve_in_thread(fake: ShapeService, host: str = "127.0.0.1", port: int = 0) -> Iterator[Server]:
    """``serve`` in a background thread with its own event loop, for sync code and subprocesses."""
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(serve(fake, host=host, port=port)) as server:
            yield server


async def _accept_loop(fake: ShapeService, listening: socket.socket, tg: anyio.abc.TaskGroup) -> None:
    """Accept connections on the (non-blocking) ``listening`` socket, one handler task each."""
    while True:
        await anyio.wait_readable(listening)
        try:
            raw, _address = listening.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            continue  # spurious wake-up, or the client gave up before we accepted
        # No await between accept and start_soon: cancellation cannot strand ``raw`` here.
        try:
            tg.start_soon(_handle, fake, raw)
        except BaseException:
            raw.close()
            raise


async def _handle(fake: ShapeService, raw: socket.socket) -> None:
    """Own ``raw``: wrap it as a stream and serve it; close it if it never becomes one."""
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with anyio.CancelScope(shield=True):  # ownership passes to the stream without a gap
            stream = await anyio.abc.SocketStream.from_socket(raw)
    except BaseException as exc:
        raw.close()
        if isinstance(exc, (*_GONE, ValueError)):  # ValueError: the client is already gone
            return
        raise
    await _connection(fake, stream)


async def _connection(fake: ShapeService, stream: anyio.abc.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            body: list[bytes] = []
            request = await _read_request(conn, stream, body)
            if request is None:
                return
            target = request.target.decode("ascii", "replace")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
            method = request.method.decode("ascii", "replace")
            written = fake.post_writes(b"".join(body)) if method == "POST" and urlsplit(target).path == PATH else None
            if written is not None:
                response, fault = written, None
            else:
                response, fault = await fake.exchange(method, target, headers, on_wire=True)
            if not await _write(conn, stream, response, fault):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (*_GONE, h11.ProtocolError):
        return
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def _read_request(conn: h11.Connection, stream: anyio.abc.SocketStream, body: list[bytes]) -> h11.Request | None:
    """The next request with its body read (into ``body``), or None when the client closed."""
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive(_RECEIVE)
            except anyio.EndOfStream:
                data = b""
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None
        elif isinstance(event, h11.Data):  # a request body: only POST /v1/writes reads one
            body.append(bytes(event.data))


async def _write(
    conn: h11.Connection, stream: anyio.abc.SocketStream, response: FakeResponse, fault: Fault | None
) -> bool:
    """Send the response (applying byte-level faults); False when the connection must end."""
    if fault is not None and fault.kind == "stall":
        await anyio.sleep(fault.seconds)
    if response.stream is not None:
        return await _write_stream(conn, stream, response)
    cut = fault is not None and fault.kind in ("reset", "truncate") and len(response.body) > 0
    headers = list(response.headers.items())
    if (cut or response.status != 200) and response.status not in (204, 304):
        # Announce the whole length so a cut body is detectably short.
        headers.append(("content-length", str(len(response.body))))
    # Written in as few sends as the pieces allow: a small answer (a catch-up, a live change) is one
    # send, so one packet for the client to wake for instead of three (the same bytes either way).
    out = [conn.send(h11.Response(status_code=response.status, headers=headers)) or b""]
    body = response.body[: len(response.body) // 2] if cut else response.body
    for start in range(0, len(body), _PIECE):
        out.append(conn.send(h11.Data(data=body[start : start + _PIECE])) or b"")
        if start + _PIECE < len(body) or cut:  # the last piece goes with the end of the message
            await stream.send(b"".join(out))
            out = []
    if cut:
        assert fault is not None
        await anyio.sleep(0.05)  # let the partial body reach the client before the connection dies
        if fault.kind == "reset":
            _reset(stream)
        return False
    out.append(conn.send(h11.EndOfMessage()) or b"")
    await stream.send(b"".join(out))
    return True


async def _write_stream(conn: h11.Connection, stream: anyio.abc.SocketStream, response: FakeResponse) -> bool:
    """A held Server-Sent Events answer: headers at once, then each piece as the service makes it."""
    events = response.stream
    assert events is not None
    try:
        await stream.send(conn.send(h11.Response(status_code=response.status, headers=list(response.headers.items())))
                          or b"")
        if response.body:
            await stream.send(conn.send(h11.Data(data=response.body)) or b"")
        try:
            async for piece in events:
                await stream.send(conn.send(h11.Data(data=piece)) or b"")
        except StreamCut:
            return False  # the connection closes without the chunked body's end
        await stream.send(conn.send(h11.EndOfMessage()) or b"")
        return True
    finally:
        with anyio.CancelScope(shield=True):
            await events.aclose()


def _reset(stream: anyio.abc.SocketStream) -> None:
    # SO_LINGER with a zero timeout makes close() send an RST instead of a FIN.
    sock: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
