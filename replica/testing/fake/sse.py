"""Live Server-Sent Events answers of the dev servers: batches as events, and the SSE faults.

Electric (``shapes/api.ex``) writes each message as ``data: <json>\\n\\n``, ends each batch that
reaches the end of the log with an ``up-to-date`` event, sends ``: keep-alive\\n\\n`` after
``keepalive_interval`` without traffic and ends the answer after ``sse_timeout``. The held stream
itself is ``ShapeService``'s (it owns the waiters); what a fault does to a stream is here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator

import anyio

from replica.protocol import wire
from replica.protocol.sse import encode_event
from replica.testing.fake.responses import json_body
from replica.testing.fake.shapes import Chunk

__all__ = ["KEEP_ALIVE", "StreamCut", "batch_events", "faulty", "once"]

KEEP_ALIVE = b": keep-alive\n\n"


class StreamCut(Exception):
    """Raised by a stream that must end mid-body: the server drops the connection there."""


def batch_events(chunk: Chunk) -> bytes:
    """A read of the log as events, closed by up-to-date (the LSN of its last change) at the end."""
    parts = [encode_event(part) for part in chunk.parts]
    if chunk.at_end and chunk.last_lsn is not None:
        control = {"headers": {"control": wire.UP_TO_DATE, wire.GLOBAL_LAST_SEEN_LSN: str(chunk.last_lsn)}}
        parts.append(encode_event(json_body(control)))
    return b"".join(parts)


async def once(body: bytes) -> AsyncGenerator[bytes, None]:
    """An answer written whole (Electric's answer when data was there at once) as a stream."""
    if body:
        yield body


async def faulty(stream: AsyncGenerator[bytes, None], kind: str, *, until: float) -> AsyncGenerator[bytes, None]:
    """``stream`` as the ``kind`` of SSE fault delivers it; ``until``: the stream's end (monotonic)."""
    try:
        if kind == "sse_silent":
            await anyio.sleep(max(0.0, until - time.monotonic()))
            return
        if kind == "sse_buffer":
            held = [part async for part in stream]
            if held:
                yield b"".join(held)
            return
        async for part in _cut(stream):
            yield part
    finally:
        await stream.aclose()


async def _cut(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for part in stream:
        start = part.find(b"data:")
        if start < 0:
            yield part  # keep-alives go through
            continue
        end = part.find(b"\n\n", start)
        yield part[: start + max(6, ((end if end > 0 else len(part)) - start) // 2)]
        raise StreamCut("FakeElectric fault: SSE stream cut mid-event")
