"""A live Server-Sent Events answer read into a ``ShapeLog``: bytes in, ``Commit``s out. Pure.

Electric streams live changes as one event per message (protocol doc §5.2) and ends each batch
with an ``up-to-date`` event. ``LiveStream.feed`` buffers a batch's events until its up-to-date
and then hands the whole batch to the ShapeLog, which commits it exactly as it commits a long-poll
answer (one publish per up-to-date, R1-R4): a stream cut mid-batch commits nothing of that batch.

No header says where a batch ends, so its position is derived (``batch_end``) from what the
batch says, each candidate at most its true end: a reconnect may be sent changes again (harmless,
applied in log order) but never skips one. A batch that grows past ``STAGE_BYTES`` without
up-to-date (a burst) is staged at its last change's own offset, so memory stays bounded (R10).
"""

from __future__ import annotations

from collections.abc import Sequence

from replica.errors import ProtocolError
from replica.protocol import wire
from replica.protocol.commits import Commit, Response
from replica.protocol.messages import Change, Control, Message, Move, parse_body
from replica.protocol.shapelog import ShapeLog
from replica.protocol.sse import Comment, EventStreamParser

__all__ = ["STAGE_BYTES", "LiveStream", "batch_end", "change_offset"]

STAGE_BYTES = 8 * 1024 * 1024  # a batch this big without up-to-date is staged at its last change
_UP_TO_DATE = b'"' + wire.UP_TO_DATE.encode() + b'"'


class LiveStream:
    """One event-stream answer to a live SSE request, from its headers to its end.

    ``open`` returns None for a stale cache replay (the ShapeLog asks again, differently). Then
    ``feed`` each read; ``close`` at the end. ``batches``/``comments``/``received`` count what came
    (the follow loop's fallback and watchdog read them).
    """

    def __init__(self, log: ShapeLog, start: str) -> None:
        self._log = log
        self._start = start  # the stream's electric-offset: known to be reached by its first batch
        self._parser = EventStreamParser()
        self._events: list[bytes] = []
        self._size = 0
        self.batches = 0  # up-to-dates taken
        self.comments = 0  # keep-alives and other comments
        self.received = 0  # bytes

    @classmethod
    def open(cls, log: ShapeLog, head: Response) -> LiveStream | None:
        start = log.open_stream(head)
        return None if start is None else cls(log, start)

    def feed(self, chunk: bytes) -> list[Commit]:
        """The commits completed by ``chunk``, in order. Raises ProtocolError for a bad batch."""
        self.received += len(chunk)
        commits: list[Commit] = []
        for item in self._parser.feed(chunk):
            if isinstance(item, Comment):
                self.comments += 1
                continue
            data = item.data
            if not data.strip():
                continue  # an empty event carries no message
            self._events.append(data)
            self._size += len(data)
            if _UP_TO_DATE in data and _ends_batch(data):
                commit = self._take(up_to_date=True)
                self.batches += 1
            elif self._size >= STAGE_BYTES:
                commit = self._stage_burst()
            else:
                continue
            if commit is not None:
                commits.append(commit)
        return commits

    def close(self, *, complete: bool) -> Commit | None:
        """The stream ended: ``complete`` when the server finished it (not cut, not abandoned).

        Events after the last up-to-date are dropped (the reconnect asks for them again), except
        when Electric answered at once with data that did not reach the end of the log (a burst
        bigger than a chunk): that whole answer is staged at its ``electric-offset``, as a long-poll
        answer without up-to-date is.
        """
        events, self._events, self._size = self._events, [], 0
        immediate = self.batches == 0 and wire.Offset.parse(self._start) > wire.Offset.parse(self._log.offset)
        if complete and events and immediate and not self._parser.pending:
            return self._log.take_batch(*_changes(events, self._start), up_to_date=False)
        return None

    def _take(self, *, up_to_date: bool) -> Commit | None:
        events, self._events, self._size = self._events, [], 0
        messages = parse_body(_array(events))
        offset = batch_end(messages, self._start if self.batches == 0 else None)
        changes = tuple(m for m in messages if isinstance(m, (Change, Move)))  # moves: subquery shapes
        complete = _global_lsn(messages[-1]) if up_to_date else None
        return self._log.take_batch(changes, offset, up_to_date=up_to_date, complete=complete)

    def _stage_burst(self) -> Commit | None:
        last = parse_body(_array(self._events[-1:]))
        if not last or not isinstance(last[-1], Change) or change_offset(last[-1]) is None:
            return None  # not at a change with a position yet: keep reading
        return self._take(up_to_date=False)


def batch_end(messages: Sequence[Message], known: str | None = None) -> wire.Offset:
    """Where a stream batch ends, as far as it says: the largest of ``known`` (a position the batch
    reaches), ``<global_last_seen_lsn>_0`` of its up-to-date (the official client's rule) and its
    last change's ``<lsn>_<op_position>``; ``-1`` when it says nothing (the caller keeps its offset).

    Each is at most the true end (Electric's up-to-date reports the LSN of the batch's last entry).
    """
    candidates = [wire.BEFORE_ALL]
    if known is not None:
        candidates.append(wire.Offset.parse(known))
    for index, message in enumerate(messages):
        if isinstance(message, Control) and message.control == wire.UP_TO_DATE:
            if index != len(messages) - 1:
                raise ProtocolError("up-to-date must be the last message of a batch")
            lsn = _global_lsn(message)
            if lsn is not None:
                candidates.append(wire.Offset(lsn, 0))
    for message in reversed(messages):
        if isinstance(message, Change):
            last = change_offset(message)
            if last is not None:
                candidates.append(last)
            break
    return max(candidates)


def change_offset(change: Change) -> wire.Offset | None:
    """A change's own log offset ``<lsn>_<op_position>`` (live changes carry both), else None."""
    lsn, op = change.headers.get("lsn"), change.headers.get("op_position")
    if isinstance(lsn, str) and lsn.isascii() and lsn.isdigit() and type(op) is int and op >= 0:
        return wire.Offset(int(lsn), op)
    return None


def _global_lsn(message: Message) -> int | None:
    """An up-to-date's ``global_last_seen_lsn`` (a decimal string), None if it has none."""
    lsn = message.headers.get(wire.GLOBAL_LAST_SEEN_LSN) if isinstance(message, Control) else None
    return int(lsn) if isinstance(lsn, str) and lsn.isascii() and lsn.isdigit() else None


def _ends_batch(data: bytes) -> bool:
    messages = parse_body(b"[" + data + b"]")
    return bool(messages) and isinstance(messages[-1], Control) and messages[-1].control == wire.UP_TO_DATE


def _array(events: list[bytes]) -> bytes:
    return b"[" + b",".join(events) + b"]"


def _changes(events: list[bytes], end: str) -> tuple[tuple[Change | Move, ...], wire.Offset]:
    messages = parse_body(_array(events))
    return tuple(m for m in messages if isinstance(m, (Change, Move))), wire.Offset.parse(end)
