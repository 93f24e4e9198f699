"""The daemon's HTTP endpoint: /healthz, /readyz, /metrics and /txid/{txid} on a loopback port by default.

``GET /txid/{txid}?timeout=SECONDS`` (default 10, at most 60) answers 200 with ``{"txid", "shapes",
"lsn"}`` once readers see the Postgres transaction (a sidecar user writes through their API, then
``curl --fail`` this), 408 when the timeout passes first, 400 for a malformed txid or timeout.
"""

from __future__ import annotations

import json
import logging
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from replica.cli.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from replica.cli.daemon import Daemon

__all__ = ["TXID_TIMEOUT", "TXID_TIMEOUT_MAX", "Endpoint", "url_host"]

log = logging.getLogger("replica.daemon")

TXID_TIMEOUT, TXID_TIMEOUT_MAX = 10.0, 60.0


class Endpoint(ThreadingHTTPServer):
    daemon_threads = True  # a slow scraper (or a long txid wait) never delays shutdown

    def __init__(self, address: tuple[str, int], daemon: Daemon) -> None:
        self.replica_daemon = daemon
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Endpoint
    server_version = "replica"
    sys_version = ""

    def do_GET(self) -> None:
        daemon = self.server.replica_daemon
        path, _, query = self.path.partition("?")
        if path == "/healthz":
            self._send(200, "application/json", b'{"status": "ok"}\n')
        elif path == "/readyz":
            ready, body = daemon.readiness()
            self._json(200 if ready else 503, body)
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE, daemon.redact(daemon.metrics.render().decode()).encode())
        elif path.startswith("/txid/"):
            self._txid(daemon, path.removeprefix("/txid/"), query)
        else:
            self._send(404, "text/plain", b"not found: try /healthz, /readyz, /metrics or /txid/{txid}\n")

    def _txid(self, daemon: Daemon, text: str, query: str) -> None:
        try:
            timeout = float(parse_qs(query).get("timeout", [str(TXID_TIMEOUT)])[-1])
            if not 0 <= timeout <= TXID_TIMEOUT_MAX:
                raise ValueError(f"timeout must be between 0 and {TXID_TIMEOUT_MAX:g} seconds, got {timeout:g}")
            daemon.replica.txid_seen(text)  # ValueError for a malformed txid, before any wait
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return
        if not daemon.replica.wait_until_txid(text, timeout):
            self._json(408, {"error": f"transaction {text} is not visible after {timeout:g} s", "txid": text})
            return
        seen = daemon.replica.txid_seen(text)
        assert seen is not None
        self._json(200, {"txid": str(seen.txid), "shapes": list(seen.shapes),
                         "lsn": None if seen.lsn is None else str(seen.lsn)})

    def do_HEAD(self) -> None:
        self.do_GET()

    def _json(self, status: int, body: Any) -> None:
        self._send(status, "application/json", json.dumps(body).encode() + b"\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s - %s", self.address_string(), format % args)


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
