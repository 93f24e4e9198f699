"""One shape's live log over Server-Sent Events: hold a stream, commit its batches, fall back.

``LiveMode.stream`` sends one live SSE request, reads the held answer into the ShapeLog
(``replica.protocol.stream``) and writes each commit as it completes; when the server ends the
stream the follow loop asks again with the latest offset, handle and cursor. Answers that are
not event streams (errors, 409) come back to the follow loop, which handles them as always.

Fallback, as the official client does it (protocol doc §5.2): a stream that ends within
``MIN_STREAM`` seconds without delivering a batch, or that the watchdog gives up because nothing,
not even a keep-alive, came for ``silence`` seconds (a proxy buffering it), is a failed stream.
After a failed one the next waits ``random(0, min(5, 0.1 * 2**n))`` seconds; after
``MAX_FAILED`` in a row the shape long-polls for the rest of the run, logged once and shown in
its status (``live_mode = "sse-fallback"``). A server that answers a live SSE request with JSON
does not stream at all: the shape long-polls at once. Unlike the official client, a short stream
that did deliver a batch is no failure: Electric ends every stream that had data at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import anyio
import httpx

from replica.errors import NetworkError
from replica.protocol.commits import Commit, Request, Response
from replica.protocol.shapelog import ShapeLog
from replica.protocol.stream import LiveStream
from replica.sync import http

__all__ = ["MAX_FAILED", "MIN_STREAM", "LiveMode"]

log = logging.getLogger("replica")

MIN_STREAM = 1.0  # seconds: a stream that ends sooner without a batch has failed
MAX_FAILED = 3  # failed streams in a row before the shape long-polls
_BASE_DELAY, _MAX_DELAY = 0.1, 5.0  # the official client's backoff between failed streams


class _Read:
    """What one stream brought: up-to-dates taken, and whether the watchdog ended it."""

    batches = 0
    silent = False


class _Reporter(Protocol):
    def _set(self, name: str, **changes: Any) -> None: ...
    def _observe(self, kind: str, name: str, **fields: Any) -> None: ...


class LiveMode:
    """How one shape follows its live log: over SSE while that works, else by long-polling."""

    def __init__(self, name: str, host: _Reporter, *, sse: bool, silence: float,
                 rng: Callable[[], float] = random.random) -> None:
        self.name, self._host, self._silence, self._rng = name, host, silence, rng
        self.wanted = sse
        self.fallen_back = False
        self.failed = 0  # failed streams in a row
        host._set(name, live_mode=self.mode)

    @property
    def sse(self) -> bool:
        """Whether the next live request asks for an event stream."""
        return self.wanted and not self.fallen_back

    @property
    def mode(self) -> str:
        return "sse-fallback" if self.fallen_back else "sse" if self.wanted else "long-poll"

    async def stream(
        self,
        client: httpx.AsyncClient,
        url: str,
        shape_log: ShapeLog,
        request: Request,
        write: Callable[[Commit], Awaitable[None]],
        *,
        opened: Callable[[], None],
        headers: Mapping[str, str],
        params: Sequence[tuple[str, str]],
    ) -> Response | None:
        """Hold one live SSE answer and write its commits; None when it was a stream (the caller
        asks again), else the whole answer for ``ShapeLog.receive``. Raises like ``http.fetch``.
        ``opened()`` is called once the stream is accepted (the shape is live and up to date)."""
        started = time.monotonic()
        read = _Read()
        try:
            async with http.open_stream(client, url, request, silence=self._silence, headers=headers,
                                        params=params) as answer:
                if answer.head is None:  # not even the headers in time: a failed stream, asked again
                    read.silent = True
                elif not answer.events:
                    if answer.head.status == 200:
                        self._fall_back("the server answered a live SSE request with JSON: it does not stream")
                    return answer.head
                else:
                    await self._read(answer, shape_log, write, opened, read)
        except NetworkError:
            self._ended(time.monotonic() - started, silent=False, delivered=read.batches > 0, broken=True)
            raise
        delay = self._ended(time.monotonic() - started, silent=read.silent, delivered=read.batches > 0)
        if delay:
            await anyio.sleep(delay)
        return None

    async def _read(self, answer: http.EventStream, shape_log: ShapeLog, write: Callable[[Commit], Awaitable[None]],
                    opened: Callable[[], None], read: _Read) -> None:
        assert answer.head is not None
        live = LiveStream.open(shape_log, answer.head)
        if live is None:
            return  # a stale cache replay: the ShapeLog asks again, differently
        opened()
        async for chunk in answer.chunks():
            for commit in live.feed(chunk):
                await write(commit)
            read.batches = live.batches
        last = live.close(complete=not answer.silent)
        if last is not None:
            await write(last)
        read.silent, read.batches = answer.silent, live.batches
        self._host._observe("response", self.name, status=200, size=live.received)

    def _ended(self, duration: float, *, silent: bool, delivered: bool, broken: bool = False) -> float:
        """Count a stream that ended (``broken``: by a network error); returns how long to wait
        before the next one. Only a whole stream that lasted says the path streams."""
        if silent:
            log.info("shape %s: the event stream was silent for %.0f s (no keep-alive); reconnecting",
                     self.name, self._silence)
        if not silent and (delivered or duration >= MIN_STREAM):
            if duration >= MIN_STREAM and not broken:
                self.failed = 0
            return 0.0
        self.failed += 1
        if self.failed >= MAX_FAILED:
            why = (f"no bytes for {self._silence:g} s, not even a keep-alive (a proxy may be buffering "
                   "the stream: nginx needs proxy_buffering off)") if silent else (
                f"{self.failed} event streams in a row ended within {MIN_STREAM:g} s without data "
                "(a proxy may be closing or caching them)")
            self._fall_back(why)
            return 0.0
        return float(self._rng() * min(_MAX_DELAY, _BASE_DELAY * 2**self.failed))

    def _fall_back(self, why: str) -> None:
        if self.fallen_back:
            return
        self.fallen_back = True
        log.warning("shape %s: falling back to long-polling for this run: %s", self.name, why)
        self._host._observe("fallback", self.name, error=why)
        self._host._set(self.name, live_mode=self.mode)
