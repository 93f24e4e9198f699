"""A server that is not Electric, for first-contact tests: a plain web server on 127.0.0.1 that
answers every GET with one page (a loopback port where nothing listens: ``daemonproc.free_port``)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGN_IN = b"<!doctype html><html><head><title>Sign in</title></head><body><form>...</form></body></html>"


@contextmanager
def serve_page(body: bytes = SIGN_IN, content_type: str | None = "text/html; charset=utf-8",
               status: int = 200) -> Iterator[tuple[str, list[str]]]:
    """A web server answering every GET with ``status``, ``content_type`` and ``body``; yields its
    base URL (``http://127.0.0.1:PORT``, no path) and the request targets it received."""
    seen: list[str] = []

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(status)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with running(Page) as url:
        yield url, seen


@contextmanager
def running(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on 127.0.0.1 (a thread per request); yields the base URL ``http://127.0.0.1:PORT``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

