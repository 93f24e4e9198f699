"""The sans-IO shape client: what to request next, and what a response means.

``ShapeLog`` is one shape's position in its Electric log. It builds the next ``Request``
(pure, idempotent: call again to resend) and turns each ``Response`` into a ``Commit`` for
the store, or raises an error that tells the caller what to do (see ``replica.errors``).
No httpx, anyio, apsw, time or random here: the caller passes in a cache buster.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from replica.errors import ProtocolError, ServerBusy, ShapeError
from replica.protocol import answers, endpoint, wire
from replica.protocol.commits import Ahead, Changes, Checkpoint, Commit, Request, Response
from replica.protocol.messages import Change, Control, Move, parse_body
from replica.protocol.shape import Shape
from replica.protocol.snapshot import parse_whole_inserts
from replica.protocol.txids import Visibility, parse_lsn
from replica.typemap.schema import TableSchema

__all__ = ["Ahead", "Changes", "Checkpoint", "Commit", "Request", "Response", "ShapeLog"]

# --- the state machine ---

# Bodies this big of nothing but whole-row inserts (snapshot chunks) are validated without building
# a Change per row and handed on as the body itself (InsertBody), which the store lets SQLite read.
WHOLE_BODY_BYTES = 16 * 1024
STALE_RETRY_LIMIT = 3  # stale cached responses in a row before giving up to the caller's backoff


@dataclass(frozen=True)
class _Position:
    """Where a response moves the log (its headers, read and checked once)."""

    handle: str | None
    offset: str
    cursor: str | None
    schema: Mapping[str, Any] | None
    table: TableSchema | None
    strict: bool


class ShapeLog:
    """One shape's position in its log. Feed it every response; it says what to request next.

    Phases: *initial* (offset -1, after a start or a 409), *syncing* (non-live requests until a
    response ends with up-to-date), *live* (long-polls with the cursor echoed). ``receive`` returns
    a ``Commit`` when there is something to write: a staging step (rows of an unfinished snapshot or
    burst, checkpointed so a crash resumes mid-way) or a publish at up-to-date.
    ``url``: the shape endpoint the responses come from, only for messages (an answer that is no
    shape log names the URL to use instead).
    """

    def __init__(
        self, shape: Shape, checkpoint: Checkpoint | None = None, *, nonce: str = "0", sse: bool = False,
        url: str | None = None,
    ) -> None:
        self.shape = shape
        #: Follow the live log as Server-Sent Events (one held stream) rather than long-polls.
        self.sse = sse
        self.url = url  # named in the message for an answer that is no shape log
        self._nonce = nonce
        self._busts = 0
        self._bust: str | None = None  # the cache-buster to send until the position moves
        self._stale = 0
        self.expired_handle: str | None = None
        self._relation_cache: tuple[str, str] | None = None
        self._base_params = shape.query_params()
        self.handle: str | None = None
        self.offset: str = wire.OFFSET_BEFORE_ALL
        self.cursor: str | None = None
        self.schema: Mapping[str, Any] | None = None
        self.table: TableSchema | None = None  # built from the schema when first needed
        self.live = False
        self.refetch = True
        self.staged = False
        self.complete: int | None = None  # the LSN the shape is known complete up to (latest up-to-date)
        self._snapshot: Visibility | None = None  # a snapshot-end not yet handed on in a commit
        if checkpoint is None or checkpoint.offset == wire.OFFSET_BEFORE_ALL:
            self._restart(checkpoint.handle if checkpoint else None)
        else:
            self.handle = checkpoint.handle
            self.offset = checkpoint.offset
            self.cursor = checkpoint.cursor
            self.schema = checkpoint.schema
            self.live = checkpoint.up_to_date
            self.refetch = False
            # A staging checkpoint means rows wait on disk for the next up-to-date.
            self.staged = not checkpoint.up_to_date

    def _restart(self, handle: str | None) -> None:
        self.handle = handle
        self.offset = wire.OFFSET_BEFORE_ALL
        self.cursor = None
        self.schema = None
        self.table = None
        self.live = False
        self.refetch = True  # the next commit starts a snapshot that replaces the table's rows
        self.staged = False
        self._snapshot = None

    @property
    def phase(self) -> str:
        if self.offset == wire.OFFSET_BEFORE_ALL:
            return "initial"
        return "live" if self.live else "syncing"

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.handle, self.offset, self.cursor, self.schema, self.live)

    def probe_request(self, need: int | None = None) -> Request | None:
        """A non-live catch-up at the current position, beside the long-poll in flight, whose answer says
        how far the shape is complete (``probe_answer``); None before the first up-to-date. ``need``, the LSN
        the group needs, is its cache-buster: one URL per question for a whole fleet (design.md §3h)."""
        if self.offset == wire.OFFSET_BEFORE_ALL or self.handle is None:
            return None
        drop = (wire.P_LIVE, wire.P_CURSOR, wire.P_LIVE_SSE, wire.P_EXPERIMENTAL_LIVE_SSE, wire.P_CACHE_BUSTER)
        bust = [] if need is None else [(wire.P_CACHE_BUSTER, f"lsn-{need}")]
        return Request(tuple(sorted([p for p in self.next_request().params if p[0] not in drop] + bust)), False)

    def probe_answer(self, response: Response) -> int | None:
        """The complete LSN if ``response`` (to ``probe_request``) is a bare up-to-date at the log's own
        position; None otherwise (it carries changes, an error, another handle, another offset: the
        log itself must catch up). Pure and changes nothing."""
        headers = response.headers
        if (response.status != 200 or headers.get(wire.H_HANDLE) != self.handle
                or headers.get(wire.H_OFFSET) != self.offset or len(response.body) > 4096):
            return None
        try:
            messages = parse_body(response.body)
        except ProtocolError:
            return None
        if len(messages) != 1 or not isinstance(messages[0], Control) or messages[0].control != wire.UP_TO_DATE:
            return None
        try:
            return _read_controls([messages[0].headers], True)[0]
        except ProtocolError:
            return None

    def refresh(self) -> None:
        """Ask the next request as a non-live catch-up at the current position (a probe for a fresh
        up-to-date, whose ``global_last_seen_lsn`` says how far the shape is complete): Electric
        answers it at once, where a long-poll waits for a change. No effect before the first up-to-date."""
        if self.live:
            self.live = False

    def next_request(self) -> Request:
        """The request to send now. Pure: calling it again returns an equal request."""
        params = list(self._base_params)
        params.append((wire.P_OFFSET, self.offset))
        if self.handle is not None:
            # Ignored by the server at offset -1, where it still keeps cache keys apart.
            params.append((wire.P_HANDLE, self.handle))
        sse = self.live and self.sse
        if self.live:
            params.append((wire.P_LIVE, "true"))
            params.append((wire.P_CURSOR, self.cursor or ""))
        if sse:  # both names, as the official client sends them: Electric 1.0.21-1.1.x knows only the second
            params.append((wire.P_LIVE_SSE, "true"))
            params.append((wire.P_EXPERIMENTAL_LIVE_SSE, "true"))
        if self.expired_handle is not None:
            params.append((wire.P_EXPIRED_HANDLE, self.expired_handle))
        if self._bust is not None:
            params.append((wire.P_CACHE_BUSTER, self._bust))
        # Sorted, like the official client, so identical requests collapse in a CDN.
        params.sort(key=lambda kv: kv[0])
        return Request(tuple(params), self.live, sse)

    def receive(self, response: Response, *, ahead: Ahead | None = None) -> Commit | None:
        """Advance on one response to the request last built. Raises per ``replica.errors``.

        ``ahead(body, table)`` is called when the response should be a snapshot chunk (a 200 to a
        non-live request, at least ``WHOLE_BODY_BYTES``), once its headers are accepted and before
        its body is validated: the caller may start converting the rows meanwhile. Nothing it
        starts may be written unless the returned commit carries that very body.
        """
        status = response.status
        if status == 200:
            return self._receive_ok(response, ahead)
        if status == 204:  # servers before 1.0.4 answered a quiet long-poll like this
            if not self.live:
                raise ProtocolError("204 No Content is only valid as the answer to a live long-poll")
            self._move(self._position(response, strict=False, up_to_date=True))
            return self._after_data((), up_to_date=True)
        if status == 409:
            self._must_refetch(response.headers.get(wire.H_HANDLE) or None)
            return None
        if status == 400 and answers.is_out_of_bounds(response.body):
            # The server lost our position (restart, handover): start the log again.
            self._must_refetch(None)
            return None
        if status in (429,) or 500 <= status <= 599:
            raise ServerBusy(
                f"server answered {status} {answers.summary(response.body)}; retrying with backoff",
                status=status,
                retry_after=answers.retry_after_seconds(response.headers.get(wire.H_RETRY_AFTER)),
            )
        if status in (400, 401, 403, 404, 405, 406, 410, 413, 414, 422):
            raise ShapeError(answers.refusal_message(status, response.body), status=status)
        raise ProtocolError(f"unexpected HTTP status {status} {answers.summary(response.body)}")

    def _is_stale(self, response: Response) -> bool:
        handle = response.headers.get(wire.H_HANDLE)
        if handle is None or handle != self.expired_handle:
            return False
        # A cache replayed a response of the handle we were told is gone: ask again, differently.
        self._stale += 1
        if self._stale > STALE_RETRY_LIMIT:
            self._stale = 0
            raise ProtocolError(
                f"a cache keeps serving responses of expired shape handle {handle!r}; "
                "check the caching proxy in front of Electric"
            )
        self._bump_cache_buster()
        return True

    def _receive_ok(self, response: Response, ahead: Ahead | None) -> Commit | None:
        # A wrong URL (Electric's root, a web page) first: its message names the fix.
        endpoint.check_shape_log(response.status, response.headers, response.body, self.url)
        if self._is_stale(response):
            return None
        # Validate everything before changing any state: a bad response is retried at the same offset.
        body = response.body
        position = self._position(response, strict=True, up_to_date=None)
        table = position.table
        changes: Changes
        whole = None
        if table is not None and len(body) >= WHOLE_BODY_BYTES:
            if ahead is not None and not self.live:
                ahead(body, table)
            assert position.schema is not None  # a table is only built from a schema
            check = functools.partial(answers.check_row_keys, schema=position.schema, relation=self._relation())
            whole = parse_whole_inserts(body, table.names, check)
        controls: Sequence[Mapping[str, Any]]
        if whole is not None:
            changes, up_to_date, controls = whole.changes, whole.up_to_date, whole.controls
        else:
            messages = parse_body(body)
            up_to_date = False
            for index, message in enumerate(messages):
                if isinstance(message, Control) and message.control == wire.UP_TO_DATE:
                    if index != len(messages) - 1:
                        raise ProtocolError("up-to-date must be the last message of a response")
                    up_to_date = True
            changes = tuple(m for m in messages if isinstance(m, (Change, Move)))
            controls = [m.headers for m in messages if isinstance(m, Control)]
            if changes:
                answers.check_keys(changes, position.schema, self._relation())
        complete, snapshot = _read_controls(controls, up_to_date)
        self._check_progress(position, up_to_date)
        self._move(position)
        self._stale = 0
        if complete is not None:
            self.complete = complete
        if snapshot is not None:
            self._snapshot = snapshot
        return self._after_data(changes, up_to_date=up_to_date)

    # --- a live event stream (replica.protocol.stream reads its events) ---

    def open_stream(self, response: Response) -> str | None:
        """Take the headers of a 200 event stream answering the live SSE request last built.

        Returns its ``electric-offset`` (the request's offset for a held stream; the end of its data
        when Electric had data at once and closes after it), or None for a stale cache replay to
        ignore. The offset itself moves only with whole batches (``take_batch``).
        """
        if not self.live:
            raise ProtocolError("an event stream answered a request that was not live")
        if self._is_stale(response):
            return None
        position = self._position(response, strict=True, up_to_date=None)
        self.handle, self.cursor = position.handle, position.cursor
        self._bust = None
        self._stale = 0
        return position.offset

    def take_batch(
        self, changes: tuple[Change | Move, ...], offset: wire.Offset, *, up_to_date: bool, complete: int | None = None
    ) -> Commit | None:
        """A batch of a live event stream, read by ``replica.protocol.stream`` which found where it
        ends (``offset``, never behind the offset now) and, at its up-to-date, the LSN the shape is
        complete up to (``complete``); published if it ended with up-to-date."""
        if complete is not None:
            self.complete = complete
        if changes:
            answers.check_keys(changes, self.schema, self._relation())
        if self.table is None and self.schema is not None:
            self.table = TableSchema.from_electric(self.schema, self.shape.overrides)
        self.offset = str(max(offset, wire.Offset.parse(self.offset)))
        return self._after_data(changes, up_to_date=up_to_date)

    def _relation(self) -> tuple[str, str]:
        if self._relation_cache is None:
            self._relation_cache = wire.parse_table(self.shape.table)
        return self._relation_cache

    def _position(self, response: Response, *, strict: bool, up_to_date: bool | None) -> _Position:
        """The position ``response`` moves to, each header read once; raises if it may not move there."""
        headers = response.headers
        handle = headers.get(wire.H_HANDLE)
        offset = headers.get(wire.H_OFFSET)
        cursor = headers.get(wire.H_CURSOR)
        raw_schema = headers.get(wire.H_SCHEMA)
        if strict:
            required = [wire.H_HANDLE, wire.H_OFFSET]
            required.append(wire.H_CURSOR if self.live else wire.H_SCHEMA)
            missing = [name for name in required if headers.get(name) is None]
            if missing and not (missing == [wire.H_SCHEMA] and self.schema is not None):
                raise ProtocolError(
                    f"response lacks the {', '.join(missing)} header(s); a proxy may be stripping "
                    "electric-* headers (forward them, and expose them if CORS applies)"
                )
        if handle is not None and self.offset != wire.OFFSET_BEFORE_ALL and handle != self.handle:
            raise ProtocolError(f"shape handle changed from {self.handle!r} to {handle!r} without a 409 must-refetch")
        if offset is not None:
            try:
                new = wire.Offset.parse(offset)
            except ValueError as exc:
                raise ProtocolError(f"malformed electric-offset header: {exc}") from None
            if new < wire.Offset.parse(self.offset):
                raise ProtocolError(f"electric-offset went backwards from {self.offset} to {offset}")
        schema, table = self.schema, self.table
        if raw_schema is not None and schema is None:
            schema = answers.parse_schema(raw_schema)
            table = TableSchema.from_electric(schema, self.shape.overrides)  # ShapeError now, before staging
        elif schema is not None and table is None:
            table = TableSchema.from_electric(schema, self.shape.overrides)
        return _Position(
            handle if handle is not None else self.handle,
            offset if offset is not None else self.offset,
            cursor if cursor is not None else self.cursor,
            schema,
            table,
            strict,
        )

    def _check_progress(self, position: _Position, up_to_date: bool) -> None:
        # R5: a non-live answer that does not move would have us ask the same thing forever.
        if position.strict and not self.live and not up_to_date and _same(position.offset, self.offset):
            raise ProtocolError(f"server did not advance past offset {position.offset} in a non-live response")

    def _move(self, position: _Position) -> None:
        self.handle, self.offset, self.cursor = position.handle, position.offset, position.cursor
        self.schema, self.table = position.schema, position.table
        self._bust = None

    def _after_data(self, changes: Changes, *, up_to_date: bool) -> Commit | None:
        was_live = self.live
        if up_to_date:
            self.live = True
            if changes or self.staged or self.refetch:
                return self._commit(changes, up_to_date=True)
            return None  # a quiet long-poll: nothing new to write
        if changes or self.refetch or not was_live:
            # Non-live progress is checkpointed even without rows (e.g. a chunk of just snapshot-end),
            # so a crash mid-snapshot resumes mid-snapshot.
            return self._commit(changes, up_to_date=False)
        return None

    def _commit(self, changes: Changes, *, up_to_date: bool) -> Commit:
        # A staging checkpoint is never "up to date": resuming from it goes non-live, and the
        # server's next up-to-date publishes what waits on disk.
        checkpoint = Checkpoint(self.handle, self.offset, self.cursor, self.schema, up_to_date)
        commit = Commit(self.shape, changes, checkpoint, up_to_date, refetch=self.refetch, table=self.table,
                        complete=self.complete if up_to_date else None, snapshot=self._snapshot)
        self._snapshot = None
        self.refetch = False
        self.staged = not up_to_date
        return commit

    def _must_refetch(self, new_handle: str | None) -> None:
        # A 409 naming a new handle: one buster for the whole fleet, which a proxy collapses (design.md §3h).
        shared = f"409-{new_handle}" if new_handle is not None and new_handle != self.handle else None
        self.expired_handle = self.handle if self.handle is not None else self.expired_handle
        self._restart(new_handle)
        self._bump_cache_buster(shared)

    def _bump_cache_buster(self, shared: str | None = None) -> None:
        self._busts += 1  # a stale replay, or a 409 without a new handle: a URL no cache has seen
        self._bust = shared if shared is not None else f"{self._nonce}-{self._busts}"


def _same(a: str, b: str) -> bool:
    return wire.Offset.parse(a) == wire.Offset.parse(b)


def _read_controls(controls: Sequence[Mapping[str, Any]], up_to_date: bool) -> tuple[int | None, Visibility | None]:
    """(the up-to-date's complete LSN, the snapshot-end's visibility) of a response's control messages."""
    complete = snapshot = None
    for headers in controls:
        if headers.get("control") == wire.SNAPSHOT_END:
            snapshot = Visibility.from_headers(headers)
    if up_to_date and controls and controls[-1].get("global_last_seen_lsn") is not None:
        complete = parse_lsn(controls[-1]["global_last_seen_lsn"], "global_last_seen_lsn")
    return complete, snapshot
