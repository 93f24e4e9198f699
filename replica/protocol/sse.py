"""The ``text/event-stream`` format (Server-Sent Events), parsed incrementally. Pure.

``EventStreamParser.feed(bytes)`` returns the events and comments completed by those bytes, in
order, whatever way the stream was cut into reads: a line, an event or a UTF-8 character may be
split across reads, and lines may end with CRLF, LF or CR (a CR at the end of one read and the LF
at the start of the next are one line end). The rules are the WHATWG HTML standard's "event stream
interpretation": ``data`` lines of one event are joined with ``\\n``; a line starting with ``:`` is
a comment (Electric's keep-alive is ``: keep-alive``); an empty line dispatches the event (one with
no data is dropped); ``event``, ``id`` and ``retry`` are kept; unknown fields are ignored; a
leading byte order mark is skipped. An event cut off by the end of the stream is never returned
(``pending`` says one was under way).

Data stays bytes: Electric sends one JSON message per event, which ``replica.protocol.stream``
hands on without decoding it twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Comment", "Event", "EventStreamParser", "encode_event"]

_BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: its data lines joined with LF, its type and the last event id seen."""

    data: bytes
    event: str = "message"
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment line (the text after ``:``, one leading space removed), e.g. ``keep-alive``."""

    text: str


class EventStreamParser:
    """Feed it the bytes of one response as they arrive; it returns what they complete."""

    def __init__(self) -> None:
        self._rest = b""  # an unfinished line
        self._start = True  # nothing read yet: a byte order mark may come
        self._skip_lf = False  # the last read ended with CR: an LF first in the next one ends nothing
        self._data: list[bytes] = []
        self._event = ""
        self._fields = False  # a field line was read since the last dispatch
        self.last_id: str | None = None
        #: The reconnection time the server asked for (``retry:``), in milliseconds.
        self.retry: int | None = None

    @property
    def pending(self) -> bool:
        """True if the bytes so far end inside an event (a line or fields not yet dispatched)."""
        return bool(self._rest) or self._fields

    def feed(self, chunk: bytes) -> list[Event | Comment]:
        out: list[Event | Comment] = []
        if not chunk:
            return out
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        text = self._rest + chunk if self._rest else chunk
        if self._start:
            if len(text) < len(_BOM) and _BOM.startswith(text):
                self._rest = text
                return out
            self._start = False
            if text.startswith(_BOM):
                text = text[len(_BOM):]
        pos = 0
        for match in _LINE_END.finditer(text):
            self._line(text[pos:match.start()], out)
            pos = match.end()
        self._rest = text[pos:]
        if text.endswith(b"\r") and pos == len(text):
            self._skip_lf = True  # the CR ended a line; an LF may still follow in the next read
        return out

    def _line(self, line: bytes, out: list[Event | Comment]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[:1] == b":":
            out.append(Comment(_value(line[1:]).decode("utf-8", "replace")))
            return
        name, colon, value = line.partition(b":")
        if colon:
            value = _value(value)
        self._fields = True
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self.last_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():
                self.retry = int(value)
        # any other field is ignored, as the standard says

    def _dispatch(self, out: list[Event | Comment]) -> None:
        if self._data:
            data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
            out.append(Event(data, self._event or "message", self.last_id))
        self._data = []
        self._event = ""
        self._fields = False


def _value(raw: bytes) -> bytes:
    return raw[1:] if raw[:1] == b" " else raw


def encode_event(data: bytes) -> bytes:
    """One event carrying ``data`` (its LFs become separate data lines), as Electric writes it."""
    return b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"
