"""Turning one HTTP request into Electric's answer (routing, auth, validation, shape reads, faults).

Pure and synchronous. A request goes through three steps so that adapters can wait in between:
``begin`` (route, authenticate, validate, draw a fault), ``produce`` (read the shape log; for a
live request with nothing new it asks to wait instead), ``finish`` (body-level faults, HEAD).
"""

from __future__ import annotations

import itertools
import random
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from replica.protocol import wire
from replica.protocol.sse import encode_event
from replica.testing.fake import responses as r
from replica.testing.fake.database import Database
from replica.testing.fake.faults import SSE_FAULTS, Fault, FaultPlan, fits
from replica.testing.fake.request import InvalidRequest, ShapeRequest, parse_shape_request, phase_of
from replica.testing.fake.responses import FakeResponse
from replica.testing.fake.shapes import ShapeDef, ShapeLog

__all__ = ["Exchange", "ShapeApi", "SseHold"]

_MALFORMED_BODY = b'[{"headers":{"control":"up-to-date"}},,{"key":'
_STALE_CACHE_SIZE = 64


@dataclass
class Exchange:
    """One request in flight. ``response`` is set when it was answered without reading a log."""

    method: str
    target: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    base: dict[str, str]
    request: ShapeRequest | None = None
    fault: Fault | None = None
    response: FakeResponse | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class SseHold:
    """A live SSE request with nothing new yet: send ``head``, then stream ``log`` after ``since``."""

    head: FakeResponse
    log: ShapeLog
    since: wire.Offset


class ShapeApi:
    """Electric's HTTP API over a Database. ``sse_timeout``: seconds an SSE answer stays open;
    ``keepalive_interval``: seconds of silence after which it sends a ``: keep-alive`` comment."""

    sse_timeout = 60.0
    keepalive_interval = 21.0

    def __init__(
        self,
        db: Database,
        faults: FaultPlan,
        *,
        long_poll_timeout: float,
        secret: str | None,
        seed: int,
    ) -> None:
        self.db = db
        self.faults = faults
        self.long_poll_timeout = long_poll_timeout
        self.secret = secret
        self._cursor_rng = random.Random(seed ^ 0x5EED)
        self._ids = itertools.count(1)
        self._unique = itertools.count(1)
        # Recent 200s, replayed by the "stale" fault as a CDN would.
        self._cache: OrderedDict[tuple[ShapeDef, str, str], FakeResponse] = OrderedDict()

    # --- step 1 ---

    def begin(self, method: str, target: str, headers: dict[str, str] | None = None) -> Exchange:
        method = method.upper()
        parts = urlsplit(target)
        # Electric normalises paths (1.7.12): /v1/shape/, /v1//shape and /v1/%73hape all route.
        path = re.sub("/+", "/", unquote(parts.path)).rstrip("/") or "/"
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        lower = {k.lower(): v for k, v in (headers or {}).items()}
        request_id = f"F{next(self._ids):015X}"
        shape_route = path == "/v1/shape"
        base = r.base_headers(request_id, lower.get("origin"), shape_route=shape_route)
        ex = Exchange(method, target, path, dict(pairs), lower, base)
        if shape_route:
            ex.response = self._shape_route(ex, pairs)
        elif path == "/v1/health" and method in ("GET", "HEAD"):
            ex.response = FakeResponse(
                200,
                {**base, "content-type": r.CONTENT_TYPE, wire.H_CACHE_CONTROL: r.CACHE_HEALTH},
                r.json_body({"status": "active"}),
            )
        elif path == "/" and method in ("GET", "HEAD"):
            ex.response = FakeResponse(200, base, b"")
        else:
            ex.response = FakeResponse(404, {**base, "content-type": "text/plain; charset=utf-8"}, b"Not found")
        return ex

    def _shape_route(self, ex: Exchange, pairs: list[tuple[str, str]]) -> FakeResponse | None:
        base = ex.base
        if ex.method == "OPTIONS":  # CORS preflight: never authenticated
            headers = {**base, "access-control-max-age": "86400", "connection": "keep-alive"}
            asked = [h.strip().lower() for h in ex.headers.get("access-control-request-headers", "").split(",")]
            allowed = [h for h in asked if h in ("if-none-match", "traceparent")]
            if allowed:
                headers["access-control-allow-headers"] = ", ".join(allowed)
            return FakeResponse(204, headers, b"")
        if ex.method == "DELETE":
            response = r.error_response(405, {"message": "DELETE not allowed"}, base)
            return response.replace(headers={**response.headers, wire.H_CACHE_CONTROL: "no-cache"})
        if ex.method not in ("GET", "HEAD", "POST"):
            return FakeResponse(404, {**base, "content-type": "text/plain; charset=utf-8"}, b"Not found")
        if self.secret is not None:
            given = ex.params.get(wire.P_SECRET, ex.params.get(wire.P_API_SECRET))
            if given != self.secret:
                return r.error_response(401, {"message": "Unauthorized - Invalid API secret"}, base)
        if ex.method == "POST":
            errors = {"subset": ["subset snapshots (POST) are not supported by FakeElectric"]}
            response = r.error_response(400, {"message": "Invalid request", "errors": errors}, base)
            return response.replace(headers={**response.headers, wire.H_CACHE_CONTROL: "no-cache"})
        try:
            ex.request = parse_shape_request(ex.params, pairs, self.db.find_table)
        except InvalidRequest as exc:
            return r.error_response(400, {"message": "Invalid request", "errors": exc.errors}, base)
        request = ex.request
        ex.fault = self.faults.take(
            phase_of(ex.params),
            lambda f: fits(f, sse=request.sse) and (f.kind != "stale" or self._stale(request) is not None),
        )
        return self._whole_response_fault(ex)

    def _whole_response_fault(self, ex: Exchange) -> FakeResponse | None:
        fault, request = ex.fault, ex.request
        if fault is None or request is None:
            return None
        if fault.kind == "status":
            body = {"message": f"Injected fault: HTTP {fault.status}"}
            return r.error_response(fault.status, body, ex.base, retry_after=fault.retry_after)
        if fault.kind == "must_refetch":
            with self.db.lock:
                log = self.db.shapes.get(request.definition)
                if log is not None:
                    self.db.expire(log)
                new = self.db.shape(request.definition).handle if fault.handle else None
            self.db.on_change()
            return r.must_refetch(new, ex.base)
        if fault.kind == "stale":
            return self._stale(request)
        return None

    def _stale(self, request: ShapeRequest) -> FakeResponse | None:
        """A cached 200 of this shape whose handle has expired: same offset first, else its -1."""
        with self.db.lock:
            for offset_text in (request.offset_text, wire.OFFSET_BEFORE_ALL):
                for (definition, handle, cached_offset), response in reversed(self._cache.items()):
                    log = self.db.by_handle.get(handle)
                    if definition == request.definition and cached_offset == offset_text and log and log.expired:
                        return response
        return None

    # --- step 2 ---

    def produce(self, ex: Exchange, *, may_wait: bool) -> FakeResponse | SseHold | float:
        """The shape response, or (when ``may_wait``) how long, from the start, it may wait for data;
        for a live SSE request with nothing new, the stream to hold (Electric holds it either way)."""
        request = ex.request
        assert request is not None
        with self.db.lock:
            log = self.db.shape(request.definition)
            if request.handle is not None and request.handle != log.handle:
                return r.must_refetch(log.handle, ex.base)
            if request.offset is None:  # offset=now
                return self._ok(ex, log, [], log.latest_offset, up_to_date=True, lsn=self.db.lsn)
            if request.offset != wire.BEFORE_ALL and not log.in_bounds(request.offset):
                if may_wait:  # Electric waits half a long-poll for the data to appear (4.3)
                    return self.long_poll_timeout / 2
                errors = {"offset": ["out of bounds for this shape"]}
                return r.error_response(400, {"message": "Invalid request", "errors": errors}, ex.base)
            chunk = log.read(request.offset)
            if chunk.parts:
                lsn = chunk.last_lsn if request.live and chunk.last_lsn is not None else self.db.lsn
                return self._ok(ex, log, chunk.parts, chunk.offset, up_to_date=chunk.at_end, lsn=lsn)
            if request.sse:
                return SseHold(self._sse_head(ex, log), log, request.offset)
            if request.live and may_wait:
                return self.long_poll_timeout
            lsn = self.db.lsn
            if self.db.lag_snapshots and chunk.offset.tx == 0 and log.taken_at == lsn:
                lsn = self.db.lsn_before  # the snapshot saw the last commit; the stream had not reached it
                log.taken_at = None  # by the next answer it has
            return self._ok(ex, log, [], chunk.offset, up_to_date=True, lsn=lsn)

    def _ok(
        self,
        ex: Exchange,
        log: ShapeLog,
        parts: list[bytes],
        offset: wire.Offset,
        *,
        up_to_date: bool,
        lsn: int,
    ) -> FakeResponse:
        request = ex.request
        assert request is not None
        if up_to_date:
            control = {"headers": {"control": wire.UP_TO_DATE, "global_last_seen_lsn": str(lsn)}}
            parts = [*parts, r.json_body(control)]
        has_data = len(parts) > 1 or not up_to_date
        etag = f"{log.handle}:{request.offset_text}:{offset}"
        if not has_data and request.live:
            etag += f":{time.monotonic_ns()}{next(self._unique)}"  # never revalidates (1.0.7)
        headers = {
            **ex.base,
            "content-type": r.CONTENT_TYPE,
            wire.H_HANDLE: log.handle,
            wire.H_OFFSET: str(offset),
            wire.H_HAS_DATA: "true" if has_data else "false",
            wire.H_ETAG: f'"{etag}"',
        }
        if up_to_date:
            headers[wire.H_UP_TO_DATE] = ""
        if request.live:
            cursor = r.next_cursor(time.time(), self.long_poll_timeout, request.cursor, self._cursor_rng)
            headers[wire.H_CURSOR] = str(cursor)
            headers[wire.H_CACHE_CONTROL] = r.CACHE_LIVE
        else:
            headers[wire.H_SCHEMA] = r.json_body(log.schema).decode()
            initial = request.offset == wire.BEFORE_ALL
            headers[wire.H_CACHE_CONTROL] = r.CACHE_INITIAL if initial else r.CACHE_NON_LIVE
        if request.sse:  # Electric writes data that is there at once as events, and closes
            headers.update(self._sse_headers())
            return FakeResponse(200, headers, b"".join(encode_event(part) for part in parts))
        if etag in [t.strip().removeprefix("W/").strip('"') for t in ex.headers.get("if-none-match", "").split(",")]:
            headers.pop(wire.H_SCHEMA, None)  # only 200s carry the schema (1.2.3)
            return FakeResponse(304, headers, b"")
        return FakeResponse(200, headers, b"[" + b",".join(parts) + b"]")

    def _sse_head(self, ex: Exchange, log: ShapeLog) -> FakeResponse:
        """The headers of a held stream: at the requested offset, up to date, events to follow."""
        request = ex.request
        assert request is not None and request.offset is not None
        offset = str(request.offset)
        cursor = r.next_cursor(time.time(), self.long_poll_timeout, request.cursor, self._cursor_rng)
        headers = {
            **ex.base,
            wire.H_HANDLE: log.handle,
            wire.H_OFFSET: offset,
            wire.H_HAS_DATA: "true",
            wire.H_UP_TO_DATE: "",
            wire.H_ETAG: f'"{log.handle}:{request.offset_text}:{offset}"',
            wire.H_CURSOR: str(cursor),
            **self._sse_headers(),
        }
        return FakeResponse(200, headers, b"")

    def _sse_headers(self) -> dict[str, str]:
        return {
            wire.H_CONTENT_TYPE: r.SSE_CONTENT_TYPE,
            "connection": "keep-alive",
            wire.H_CACHE_CONTROL: r.cache_sse(self.sse_timeout),
        }

    # --- step 3 ---

    def finish(self, ex: Exchange, response: FakeResponse, *, on_wire: bool = False) -> FakeResponse:
        """Remember replayable 200s, apply body-level faults, strip HEAD bodies.

        ``on_wire``: the caller is a socket server, which truncates the bytes itself.
        """
        request, fault = ex.request, ex.fault
        if (request is not None and not request.sse and response.status == 200 and wire.H_HANDLE in response.headers
                and fault is None):
            with self.db.lock:
                key = (request.definition, response.headers[wire.H_HANDLE], request.offset_text)
                self._cache[key] = response
                self._cache.move_to_end(key)
                while len(self._cache) > _STALE_CACHE_SIZE:
                    self._cache.popitem(last=False)
        if fault is not None and not (on_wire and fault.kind == "truncate"):
            response = _body_fault(fault, response)
        if ex.method == "HEAD":
            response = response.replace(body=b"", stream=None)
        return response


def _body_fault(fault: Fault, response: FakeResponse) -> FakeResponse:
    if fault.kind == "malformed":
        return response.replace(body=_MALFORMED_BODY)
    if fault.kind == "drop_headers":
        return response.replace(headers={k: v for k, v in response.headers.items() if k not in fault.headers})
    if fault.kind == "truncate":
        return response.replace(body=response.body[: len(response.body) // 2])
    return response


def transport_fault(ex: Exchange) -> Fault | None:
    """The fault an adapter applies on the wire (reset, stall, and the byte-level truncate)."""
    if ex.fault is not None and ex.fault.kind in ("reset", "stall", "truncate", *SSE_FAULTS):
        return ex.fault
    return None

