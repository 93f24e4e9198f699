"""The short path (sync/direct.py) sends what httpx sends, and hands httpx what only httpx handles.

Over a real loopback server; the tuned streams (sync/sockets.py) are on in half the cases, as in the daemon.
"""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpcore
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from plainweb import running

from replica import tuning
from replica.errors import NetworkError
from replica.protocol import Request
from replica.sync import direct, sockets
from replica.sync import http as replica_http

BODY = b'[{"headers":{"control":"up-to-date"}}]'


@contextmanager
def serving() -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """A shape-log stand-in: /v1/shape answers BODY; /moved redirects there; /cookie sets a cookie; /gzip
    answers BODY gzipped; /slow never answers. Yields its base URL and what it was asked (target, headers)."""
    seen: list[tuple[str, dict[str, str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            path = self.path.split("?")[0]
            if path == "/slow":
                threading.Event().wait(1)
                return
            body, extra = BODY, [("electric-offset", "0_0"), ("electric-offset", "1_0")]  # a repeated header
            if path == "/moved":
                body, extra = b"", [("location", "/v1/shape?" + self.path.split("?")[1])]
            elif path == "/cookie":
                extra.append(("set-cookie", "sticky=one; Path=/"))
            elif path == "/gzip":
                body = gzip.compress(BODY)
                extra.append(("content-encoding", "gzip"))
            self.send_response(302 if path == "/moved" else 200)
            for key, value in extra:
                self.send_header(key, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with running(Handler) as url:
        yield url, seen


REQUEST = Request((("handle", "h-1"), ("offset", "0_inf"), ("live", "true"), ("where", "id = $1 AND x <> 'é/&+'")), True)


def fetch_all(urls: list[str], *, short: bool, headers: dict[str, str] | None = None) -> list[Any]:
    async def main() -> list[Any]:
        async with replica_http.new_client() as client:
            if not short:
                replica_http._DIRECT.pop(client, None)
            found = []
            for url in urls:
                reply = await replica_http.fetch(client, url, REQUEST, headers=headers, params=[("secret", "s 1")])
                found.append((reply.status, reply.headers.get("electric-offset"), reply.body))
            shortcut = replica_http._DIRECT.get(client)
            found.append(None if shortcut is None else shortcut.declined)
            return found

    return anyio.run(main)


@pytest.fixture(params=[True, False], ids=["tuned streams", "httpcore's streams"])
def tuned(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(tuning, "_large_reads", request.param)
    return bool(request.param)


def test_the_short_path_sends_the_request_httpx_sends(tuned: bool) -> None:
    with serving() as (base, seen):
        url = base + "/v1/shape?source_id=a b"
        short = fetch_all([url, url], short=True, headers={"Authorization": "Bearer t"})
        assert short[-1] is False  # taken, not declined
        via_httpx = fetch_all([url], short=False, headers={"Authorization": "Bearer t"})
    assert short[:-1] == [(200, "0_0, 1_0", BODY)] * 2 and via_httpx[:-1] == short[:1]
    assert seen[0] == seen[1] == seen[2], seen  # the same target and headers, byte for byte
    assert seen[0][1]["authorization"] == "Bearer t" and seen[0][1]["host"] == base.removeprefix("http://")


def test_a_redirect_is_followed_by_httpx_and_the_short_path_then_stays_out(tuned: bool) -> None:
    with serving() as (base, seen):
        found = fetch_all([base + "/moved", base + "/moved"], short=True)
    assert found[:-1] == [(200, "0_0, 1_0", BODY)] * 2
    assert found[-1] is True  # declined for good
    # the first redirect is asked twice (short path, then httpx), the second only through httpx
    assert [target.split("?")[0] for target, _ in seen] == ["/moved", "/moved", "/v1/shape", "/moved", "/v1/shape"]


def test_a_cookie_set_on_the_short_path_is_kept_and_sent_back(tuned: bool) -> None:
    with serving() as (base, seen):
        found = fetch_all([base + "/cookie", base + "/v1/shape"], short=True)
    assert found[:-1] == [(200, "0_0, 1_0", BODY)] * 2 and found[-1] is True
    assert "cookie" not in seen[0][1] and seen[1][1]["cookie"] == "sticky=one"


def test_a_compressed_body_is_decoded(tuned: bool) -> None:
    with serving() as (base, _):
        assert fetch_all([base + "/gzip"], short=True)[0] == (200, "0_0, 1_0", BODY)


def test_errors_on_the_short_path_are_translated(tuned: bool) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(NetworkError, match="connection refused"):
        fetch_all([f"http://127.0.0.1:{port}/v1/shape"], short=True)

    async def slow(base: str) -> None:
        async with replica_http.new_client() as client:
            assert client in replica_http._DIRECT
            await replica_http.fetch(client, base + "/slow", REQUEST, timeout=0.3)

    with serving() as (base, _), pytest.raises(NetworkError, match="timed out after 0.3 s"):
        anyio.run(slow, base)


CLIENT = httpx.AsyncClient()
params = st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=5)


@given(own=params, query=params, path=st.sampled_from(["/v1/shape", "/a%20b/v1/shape", "/"]))
def test_the_short_path_url_is_httpx_url(own: list[tuple[str, str]], query: list[tuple[str, str]], path: str) -> None:
    """Behind a shared cache the URL is the cache key: the short path must write it exactly as httpx does."""
    url = str(httpx.URL("http://example.test:8080" + path, params=own))
    shortcut = direct.Direct(CLIENT, httpcore.AsyncConnectionPool())
    expected = httpx.URL(httpx.URL(url).copy_with(query=None), params=[*httpx.URL(url).params.multi_items(), *query])
    assert shortcut.target(url, query) == expected.raw_path


def test_tuned_streams_only_after_tune_process(tuned: bool) -> None:
    async def main() -> object:
        async with replica_http.new_client() as client:
            pool: Any = replica_http._DIRECT[client]._pool
            return pool._network_backend

    assert isinstance(anyio.run(main), sockets.Tuned) is tuned

