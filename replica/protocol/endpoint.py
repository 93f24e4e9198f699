"""Is a 200 a shape log at all? If not, say which URL to use instead.

The most common first mistake is the server's base URL instead of its shape endpoint: Electric
answers ``GET /`` with 200 and an empty body, a web server or proxy with an HTML page (a login
page, an error page). Neither breaks Electric's contract; they are not Electric's shape log, and
"not valid JSON, may have been truncated" would point the wrong way. ``check_shape_log`` tells
them apart from a proxy that strips Electric's headers off a real log (the body is still an array
of messages: ``ShapeLog`` says to forward the headers) and raises ``NotAShapeLog`` with a message
that names the fix. Pure: the URL is only taken apart, never fetched.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from replica.errors import NotAShapeLog, ProtocolError
from replica.protocol import wire
from replica.protocol.messages import parse_body

__all__ = ["SHAPE_PATH", "check_shape_log", "endpoint_of", "shape_url"]

SHAPE_PATH = "/v1/shape"
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


def check_shape_log(status: int, headers: Mapping[str, str], body: bytes, url: str | None) -> None:
    """Raise NotAShapeLog unless a successful answer (``status``, lower-case ``headers``, ``body``)
    may be a shape log.

    Not a shape log: neither ``electric-handle`` nor ``electric-offset`` and a body that is not an
    array of Electric messages (an empty body, HTML, other JSON); or a content type that is neither
    JSON nor an event stream. ``url`` is the endpoint the request went to (for the message).
    """
    media = _media_type(headers.get("content-type"))
    foreign_type = media is not None and not _is_log_type(media)
    electric = headers.get(wire.H_HANDLE) is not None or headers.get(wire.H_OFFSET) is not None
    if electric and not foreign_type:
        return
    if not electric and not foreign_type and _is_messages(body, media):
        return  # a real log whose headers a proxy dropped: ShapeLog names that fix
    answered = f"{endpoint_of(url)} answered {_describe(status, media, body)}"
    if electric:  # Electric's headers on something else: the body was replaced on the way
        raise NotAShapeLog(
            f"{answered} with Electric's headers but not a shape log{_title(body)}: a proxy may be "
            "replacing Electric's responses; check what sits between replica and Electric"
        )
    suggestion = shape_url(url)
    if suggestion is None:  # the URL is the shape endpoint already: something else answers there
        raise NotAShapeLog(
            f"{answered} without Electric's headers{_title(body)}: something other than Electric answers "
            "at this URL (a proxy's login or error page?); check the URL and what sits in front of Electric"
        )
    raise NotAShapeLog(
        f"{answered} without Electric's headers: is this the shape endpoint? Electric serves shapes at {suggestion}"
    )


def endpoint_of(url: str | None) -> str:
    """The URL as a message shows it: without its query (it may hold the secret), fragment or
    credentials; "the server" when unknown."""
    if not url:
        return "the server"
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def shape_url(url: str | None) -> str | None:
    """The shape endpoint ``url`` probably meant; None if it ends with ``/v1/shape`` already.

    ``http://host:3000`` → ``http://host:3000/v1/shape``, ``http://host/electric`` (a prefix a proxy
    serves Electric under) → ``http://host/electric/v1/shape``, ``…/v1`` or ``…/v1/shapes`` →
    ``…/v1/shape``; ``…/v1/shape`` when the URL is unknown.
    """
    if not url:
        return f"…{SHAPE_PATH}"
    parts = urlsplit(endpoint_of(url))
    path = parts.path.rstrip("/")
    if path.endswith(SHAPE_PATH):
        return None
    head = path[: path.rfind("/v1/")] if "/v1/" in path else path.removesuffix("/v1")
    return urlunsplit((parts.scheme, parts.netloc, head + SHAPE_PATH, "", ""))


def _media_type(value: str | None) -> str | None:
    if value is None:
        return None
    return value.split(";", 1)[0].strip().lower() or None


def _is_log_type(media: str) -> bool:
    # Electric sends application/json (text/event-stream for live SSE); +json covers proxies' variants.
    return media in ("application/json", "text/json", "text/event-stream") or media.endswith("+json")


def _is_messages(body: bytes, media: str | None) -> bool:
    if media == "text/event-stream":
        return bool(body.strip())
    if body.lstrip()[:1] != b"[":
        return False
    try:
        parse_body(body)
    except ProtocolError:
        return False
    return True


def _describe(status: int, media: str | None, body: bytes) -> str:
    words = [str(status)]
    if media is not None:
        words.append(media)
    if not body:
        words.append("(empty body)")
    return " ".join(words)


def _title(body: bytes) -> str:
    """`` (page title 'Sign in')`` for an HTML page with a title, else empty."""
    match = _TITLE.search(body[:64 * 1024])
    if match is None:
        return ""
    title = " ".join(html.unescape(match.group(1).decode("utf-8", "replace")).split())[:80]
    return f" (page title {title!r})" if title else ""
