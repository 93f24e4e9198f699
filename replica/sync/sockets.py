"""httpcore's network backend made cheaper for a process that is mostly replica (``tune_process()``).

``http.new_client`` installs ``Tuned`` in its clients' pools once ``replica.tuning.tune_process()``
asked for it (the CLI and daemon do); the library on its own never does.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpcore

__all__ = ["READ_SIZE", "Tuned", "TunedStream"]

READ_SIZE = 1020 * 1024  # just under glibc's 1 MiB mmap threshold (replica.tuning): each buffer comes from the heap


class Tuned(httpcore.AsyncNetworkBackend):
    """httpcore's backend with cheaper plain-TCP streams (``TunedStream``).

    Only once ``replica.tuning.tune_process()`` asked for it (the CLI and daemon do): it sets and
    reads private attributes of httpx's transport, anyio's socket stream and asyncio's transport.
    """

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        return TunedStream(await self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        return TunedStream(await self._backend.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class TunedStream(httpcore.AsyncNetworkStream):
    """A plain TCP stream read READ_SIZE bytes at a time, that waits (and sets a timeout) only when it must.

    A snapshot chunk is ~10 MB, and httpcore, h11 and anyio cost the main thread a fixed amount per
    read: ~35 ms per chunk in 64 KiB reads, 26-40 ms in the 256 KiB asyncio's transport takes per
    socket read, 14-24 ms in ~1 MiB ones (so the transport is asked for those too). A read still
    returns whatever has arrived, so small responses (long-polls) are unchanged.

    An idle long-poll round trip is one small write and a read or two: there httpcore's timeout
    scope around each call, anyio's yield in each send and its socket-attribute dictionary built
    for each pooled-connection check were a fifth of the CPU (docs/design.md §3i). A write the
    transport takes at once needs neither a wait nor a timeout, nor does a read of data already
    received; everything else (TLS streams, a full send buffer, waiting for data) goes through
    httpcore's stream as before.
    """

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket = stream.get_extra_info("socket")
        # anyio's asyncio socket stream and its protocol (not found for TLS or trio: then unused)
        inner: Any = getattr(stream, "_stream", None)
        transport: Any = getattr(inner, "_transport", None)
        protocol: Any = getattr(inner, "_protocol", None)
        lean = isinstance(transport, asyncio.Transport) and all(
            hasattr(protocol, name) for name in ("write_event", "read_event", "read_queue", "exception"))
        self._inner: Any = inner if lean else None
        self._transport: Any = transport if lean else None
        self._protocol: Any = protocol if lean else None
        # asyncio's transport reads its socket max_size (256 KiB) at a time; neither httpcore nor
        # anyio exposes it, so it is set where the attribute is found (asyncio, not trio or TLS).
        if isinstance(getattr(transport, "max_size", None), int):
            transport.max_size = READ_SIZE

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if protocol is not None and protocol.read_queue and not getattr(self._inner, "_closed", True):
            data: bytes = await self._inner.receive(max(max_bytes, READ_SIZE))  # here already: no wait
            return data
        return await self._stream.read(max(max_bytes, READ_SIZE), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        transport, protocol = self._transport, self._protocol
        if (transport is None or not buffer or transport.is_closing() or protocol.exception is not None
                or not protocol.write_event.is_set() or getattr(self._inner, "_closed", True)):
            await self._stream.write(buffer, timeout)
            return
        transport.write(buffer)  # taken now (sent, or buffered by asyncio): nothing to wait for
        if not protocol.write_event.is_set():  # the buffer is above its high-water mark: let it drain
            with _write_errors(), anyio.fail_after(timeout):
                await protocol.write_event.wait()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return await self._stream.start_tls(ssl_context, server_hostname, timeout)  # TLS: httpcore's own stream

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:  # httpcore asks before reusing a connection
            return _readable(self._socket)
        return self._stream.get_extra_info(info)


def _readable(sock: socket.socket) -> bool:
    """Would a recv return at once (data, or the end)? As httpcore's check, on a socket found once."""
    fd = sock.fileno()
    if fd < 0:
        return True
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


@contextmanager
def _write_errors() -> Iterator[None]:
    """A stalled drain as httpcore words it (httpcore's stream maps anyio's errors the same way)."""
    try:
        yield
    except TimeoutError as exc:
        raise httpcore.WriteTimeout(str(exc)) from exc
