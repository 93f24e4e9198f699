"""The HTTP rim over real loopback sockets: bodies arrive whole, in large reads."""

from __future__ import annotations

import asyncio.selector_events
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpcore
import pytest
from httpcore._backends.anyio import AnyIOStream

from replica import tuning
from replica.protocol import Request
from replica.sync import http as replica_http
from replica.sync import sockets

BODY = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MB, no two reads alike


@contextmanager
def serving(body: bytes) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the second request reuses the connection

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            for start in range(0, len(body), 100_000):  # in pieces, as a server streaming a chunk would
                self.wfile.write(body[start:start + 100_000])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/shape"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("tuned", [True, False], ids=["tune_process() called", "library defaults"])
def test_a_large_body_arrives_whole_read_in_large_pieces_once_asked(monkeypatch: pytest.MonkeyPatch, tuned: bool) -> None:
    """Only after ``tune_process()`` (the CLI and daemon) do clients read ~1 MiB at a time: it sets private
    attributes of httpx and asyncio, which the library never does on its own."""
    monkeypatch.setattr(tuning, "_large_reads", tuned)
    # Spy on the network backend's own stream: what it is asked for is what each read becomes.
    asked: list[int] = []
    inner = AnyIOStream.read

    async def inner_spy(self: AnyIOStream, max_bytes: int, timeout: float | None = None) -> bytes:
        asked.append(max_bytes)
        return await inner(self, max_bytes, timeout)

    monkeypatch.setattr(AnyIOStream, "read", inner_spy)
    # And asyncio's transport reads its socket that much at a time (it passes max_size to recv).
    received: list[int] = []
    data_received = asyncio.selector_events._SelectorSocketTransport._read_ready__data_received

    def data_received_spy(self: Any) -> None:
        received.append(self.max_size)
        data_received(self)

    monkeypatch.setattr(asyncio.selector_events._SelectorSocketTransport, "_read_ready__data_received",
                        data_received_spy)

    async def main() -> list[bytes]:
        async with replica_http.new_client() as client:
            return [
                (await replica_http.fetch(client, url, Request((("offset", "-1"),), False))).body for _ in range(2)
            ]

    with serving(BODY) as url:
        bodies = anyio.run(main)
    assert bodies == [BODY, BODY]
    if not tuned:
        assert set(asked) == {httpcore.AsyncHTTP11Connection.READ_NUM_BYTES}, sorted(set(asked))
        assert set(received) == {asyncio.selector_events._SelectorSocketTransport.max_size}, sorted(set(received))
        return
    assert asked and set(asked) == {sockets.READ_SIZE}, sorted(set(asked))
    assert received and set(received) == {sockets.READ_SIZE}, sorted(set(received))
    assert sockets.READ_SIZE > httpcore.AsyncHTTP11Connection.READ_NUM_BYTES  # larger than httpcore's own
    assert sockets.READ_SIZE > asyncio.selector_events._SelectorSocketTransport.max_size  # and asyncio's
