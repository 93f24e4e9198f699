"""Response values and the header rules of Electric's ``response.ex`` (spec §2.2–§2.4)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from replica.protocol import wire

__all__ = [
    "CACHE_ERROR",
    "CACHE_INITIAL",
    "CACHE_LIVE",
    "CACHE_NON_LIVE",
    "SSE_CONTENT_TYPE",
    "FakeResponse",
    "MUST_REFETCH_BODY",
    "SERVER",
    "error_response",
    "json_body",
    "next_cursor",
]

SERVER = "ElectricSQL/1.7.12"
CONTENT_TYPE = "application/json; charset=utf-8"
SHAPE_METHODS = "GET, POST, HEAD, DELETE, OPTIONS"
OTHER_METHODS = "GET, HEAD"

CACHE_INITIAL = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
CACHE_LIVE = "public, max-age=5, stale-while-revalidate=5"
SSE_CONTENT_TYPE = "text/event-stream"
CACHE_NON_LIVE = "public, max-age=60, stale-while-revalidate=300"
CACHE_409 = "public, max-age=60, must-revalidate"
CACHE_409_NO_HANDLE = "public, max-age=1, must-revalidate"
CACHE_ERROR = "no-store"
CACHE_HEALTH = "no-cache, no-store, must-revalidate"

MUST_REFETCH_BODY = b'[{"headers":{"control":"must-refetch"}}]'

# Electric's cursor epoch (plug/utils.ex): intervals are counted from here.
CURSOR_EPOCH = datetime(2024, 10, 9, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class FakeResponse:
    """An HTTP response: status, lower-case header names, body bytes; a held Server-Sent Events
    answer also has a ``stream``: more body, written as it comes, after ``body``."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: AsyncGenerator[bytes, None] | None = field(default=None, compare=False, repr=False)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def replace(self, **changes: Any) -> FakeResponse:
        values = {"status": self.status, "headers": dict(self.headers), "body": self.body, "stream": self.stream}
        values.update(changes)
        return FakeResponse(**values)


def cache_sse(sse_timeout: float) -> str:
    """An SSE answer is cached for just under the stream's life, so a CDN can collapse requests."""
    return f"public, max-age={max(1, int(sse_timeout) - 1)}"


def json_body(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def base_headers(request_id: str, origin: str | None, *, shape_route: bool) -> dict[str, str]:
    """Headers on every response (router.ex / CORS)."""
    return {
        wire.H_SERVER: SERVER,
        "x-request-id": request_id,
        "access-control-allow-origin": origin or "*",
        "access-control-expose-headers": wire.EXPOSED_HEADERS,
        "access-control-allow-methods": SHAPE_METHODS if shape_route else OTHER_METHODS,
    }


def error_response(
    status: int,
    body: Any,
    headers: dict[str, str],
    *,
    retry_after: float | None = None,
) -> FakeResponse:
    """An error (≥400, not 409): never cached."""
    out = {
        **headers,
        "content-type": CONTENT_TYPE,
        wire.H_CACHE_CONTROL: CACHE_ERROR,
        "surrogate-control": "no-store",
    }
    if retry_after is not None:
        out[wire.H_RETRY_AFTER] = str(math.ceil(retry_after))
    return FakeResponse(status, out, json_body(body))


def must_refetch(handle: str | None, headers: dict[str, str]) -> FakeResponse:
    """The 409: exact body, the new handle only in the header, cached briefly."""
    out = {**headers, "content-type": CONTENT_TYPE}
    if handle is not None:
        out[wire.H_HANDLE] = handle
        out[wire.H_CACHE_CONTROL] = CACHE_409
    else:
        out[wire.H_CACHE_CONTROL] = CACHE_409_NO_HANDLE
    return FakeResponse(409, out, MUST_REFETCH_BODY)


def next_cursor(now: float, long_poll_timeout: float, request_cursor: int | None, rng: random.Random) -> int:
    """Electric's live cursor: seconds since the epoch rounded up to a multiple of the long-poll
    timeout (in whole seconds); strictly greater than the cursor the client sent."""
    interval = max(1, math.ceil(long_poll_timeout))
    cursor = math.ceil((now - CURSOR_EPOCH) / interval) * interval
    if request_cursor is not None and cursor <= request_cursor:
        cursor = request_cursor + rng.randint(1, 3600)
    return cursor
