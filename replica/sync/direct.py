"""A shape-log GET sent straight through httpcore's connection pool: the long-poll's short path.

1,000 idle shapes make 50 long-poll round trips a second, and py-spy put about a third of each
one's CPU in httpx's client layer: building and parsing the URL, merging headers, cookies, redirect
and auth bookkeeping, response wrappers (docs/design.md §3i). ``Direct`` sends the same request
(the URL httpx would build, the client's default headers) through the same pool, so the same
connections, TLS settings and limits, and skips that layer. It declines (``None``) whatever only
httpx handles, and then ``http.fetch`` sends the request through httpx as before:

* a client that holds cookies, or a response that sets one (httpx keeps it: the client switches to
  httpx for good once it has stored it);
* a redirect (the answer is dropped and the request resent through httpx, which follows it; a URL
  that redirects once keeps being sent through httpx).

httpcore's errors are raised as they are: ``http.fetch`` translates them with httpx's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import httpcore
import httpx

from replica.protocol.shapelog import Response

__all__ = ["Direct"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Direct:
    """The short path of one ``httpx.AsyncClient`` made by ``http.new_client`` (its pool and headers)."""

    def __init__(self, client: httpx.AsyncClient, pool: httpcore.AsyncConnectionPool) -> None:
        self._client, self._pool = client, pool
        self._defaults = [(k.lower(), v) for k, v in client.headers.raw]
        self._bases: dict[str, _Base] = {}
        self.declined = False  # sticky: a redirect or a cookie seen once sends everything through httpx

    async def get(
        self, url: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str] | None, timeout: float
    ) -> Response | None:
        """GET ``url`` with ``query`` appended to its own; None when httpx must send it."""
        if self.declined or self._client.cookies:
            return None
        base = self._base(url)
        if base.target is None:
            return None
        target = self.target(url, query)
        sent = [(b"host", base.host), *self._defaults]
        if headers:
            names = {name.lower().encode("latin-1") for name in headers}
            sent = [(k, v) for k, v in sent if k not in names] + [
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
            ]
        limit = {"connect": min(timeout, 10.0), "read": timeout, "write": timeout, "pool": timeout}
        request = httpcore.Request(
            b"GET", httpcore.URL(scheme=base.scheme, host=base.hostname, port=base.port, target=target),
            headers=sent, extensions={"timeout": limit},
        )
        reply = await self._pool.handle_async_request(request)
        try:
            body = b"".join([part async for part in reply.stream])  # type: ignore[union-attr]
        finally:
            await reply.aclose()
        found = _headers(reply.headers)
        if reply.status in _REDIRECTS:
            self.declined = True
            return None
        if "set-cookie" in found:
            self._keep_cookies(url, reply.status, reply.headers)
        if found.get("content-encoding", "identity") != "identity":
            decoded = httpx.Response(reply.status, headers=reply.headers, stream=httpx.ByteStream(body))
            body = decoded.read()
        return Response(reply.status, found, body)

    def target(self, url: str, query: Sequence[tuple[str, str]]) -> bytes:
        """The request target (path and query) httpx would send for ``url`` and ``query``."""
        base = self._base(url)
        # The query exactly as httpx writes it: a key's values together, where the key first came,
        # then urllib's urlencode. Behind a shared cache every replica's URL for one position must
        # be the same bytes, whichever path sent it.
        grouped: dict[str, list[Any]] = {}
        for key, value in [*base.query, *query]:
            grouped.setdefault(key, []).append(value)
        items = [(key, value) for key, values in grouped.items() for value in values]
        return (base.target or b"") + (b"?" + urlencode(items).encode("ascii") if items else b"")

    def _base(self, url: str) -> _Base:
        base = self._bases.get(url)
        if base is None:
            base = self._bases[url] = _Base(httpx.URL(url))
        return base

    def _keep_cookies(self, url: str, status: int, raw: list[tuple[bytes, bytes]]) -> None:
        self._client.cookies.extract_cookies(httpx.Response(status, headers=raw, request=httpx.Request("GET", url)))
        self.declined = True  # the next request must carry it: httpx's job


class _Base:
    """What one configured URL contributes to every request: scheme, host, path and own query."""

    def __init__(self, url: httpx.URL) -> None:
        self.scheme, self.hostname, self.port = url.raw_scheme, url.raw_host, url.port
        self.host = url.netloc  # the Host header, as httpx writes it (no default port)
        self.query: list[tuple[str, Any]] = list(url.params.multi_items())
        ok = url.scheme in ("http", "https") and not url.fragment and not url.userinfo
        self.target: bytes | None = url.raw_path.split(b"?", 1)[0] if ok else None


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Response headers as ``fetch`` gives them: lower-case names, repeated ones joined like httpx's."""
    try:
        found: dict[str, str] = {}
        for key, value in raw:
            name, text = key.decode("ascii").lower(), value.decode("ascii")
            found[name] = f"{found[name]}, {text}" if name in found else text
        return found
    except UnicodeDecodeError:  # httpx picks one encoding for them all: let it
        return {k.lower(): v for k, v in httpx.Headers(raw).items()}
