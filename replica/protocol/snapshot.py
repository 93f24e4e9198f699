"""Snapshot chunks: bodies of whole-row inserts, validated without building a Change per row.

An initial sync is ~10 MB bodies of nothing but inserts. ``parse_whole_inserts`` checks such a
body with msgspec against the shape's columns (in C, no object per row that outlives its piece)
and returns it as an ``InsertBody``: the body itself, which the store lets SQLite read
(``replica.fast``). Anything else is ``messages.parse_body``'s job. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import msgspec

from replica.errors import ProtocolError
from replica.protocol import framing
from replica.protocol.messages import Change, parse_body
from replica.protocol.wire import UP_TO_DATE

__all__ = ["NUL_ESCAPE", "PIECE", "Check", "InsertBody", "WholeInserts", "parse_whole_inserts"]

PIECE = 128 * 1024  # validated in pieces of about this size: its objects stay in the CPU cache
NUL_ESCAPE = re.compile(rb"\\u0000")  # re finds it faster than ``in`` over a JSON body (1.4-2.4x for "\\u")


@dataclass(frozen=True, eq=False)
class InsertBody:
    """A validated response body whose changes are all inserts of exactly ``columns``, in log order.

    Kept as the body: a ~10 MB snapshot chunk is ~5x that as Python objects, and SQLite reads
    the rows straight from the JSON (``replica.fast``). ``changes()`` parses them for the
    Python route, which takes over when SQLite cannot (and names a bad value).
    """

    body: bytes
    count: int
    columns: tuple[str, ...]

    def changes(self) -> list[Change]:
        return [m for m in parse_body(self.body) if isinstance(m, Change)]

    def nul_escapes(self) -> bool:
        """True if the body may hold an escaped NUL (``\\u0000``): SQLite's ``length()`` and ``GLOB``
        stop at a NUL, so the SQL type map would misread such a value; the Python route reads it.
        Postgres text cannot hold a NUL, so only a hostile body has one (~0.5 ms per MB)."""
        return NUL_ESCAPE.search(self.body) is not None

    def __repr__(self) -> str:
        return f"InsertBody({self.count} inserts, {len(self.body)} bytes)"


class WholeInserts(NamedTuple):
    """A body of whole-row inserts (and controls), validated but not turned into Change values.

    ``controls``: the headers of its control messages (snapshot-end, up-to-date), in order.
    """

    changes: InsertBody
    up_to_date: bool
    controls: list[dict[str, Any]]


# check(keys, rows, first): a piece's changes, in log order; ``rows[i]`` holds the values of
# ``keys[i]`` as attributes ``f0``, ``f1``… in column order, and ``first`` is the index of
# ``keys[0]`` among the body's changes.
Check = Callable[[list[str], list[Any], int], None]


# Snapshot rows carry only an operation and their relation. Any other header (a commit's lsn and
# txids, a subquery's tags) makes the body a Change body, whose headers the store reads.
class _InsertHeaders(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    operation: Literal["insert"] | msgspec.UnsetType = msgspec.UNSET
    relation: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    control: str | msgspec.UnsetType = msgspec.UNSET
    global_last_seen_lsn: str | msgspec.UnsetType = msgspec.UNSET
    xmin: str | msgspec.UnsetType = msgspec.UNSET
    xmax: str | msgspec.UnsetType = msgspec.UNSET
    xip_list: list[str] | msgspec.UnsetType = msgspec.UNSET


class _InsertOnlyHeaders(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    operation: Literal["insert"]
    relation: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


@lru_cache(maxsize=64)
def _decoders(columns: tuple[str, ...]) -> tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]:
    """(inserts only, inserts and controls) for a piece of a body with these columns."""
    # Field names f0, f1…: column names need not be Python identifiers.
    row = msgspec.defstruct(
        "Row", [(f"f{i}", str | None) for i in range(len(columns))],
        rename={f"f{i}": name for i, name in enumerate(columns)}, forbid_unknown_fields=True, gc=False,
    )
    # Nearly every piece holds inserts only: all fields required, so no message needs a look in Python.
    insert = msgspec.defstruct("Insert", [("headers", _InsertOnlyHeaders), ("key", str), ("value", row)], gc=False)
    message = msgspec.defstruct(
        "Message", [("headers", _InsertHeaders), ("key", str | msgspec.UnsetType, msgspec.UNSET),
                    ("value", row | msgspec.UnsetType, msgspec.UNSET)], gc=False,
    )
    return msgspec.json.Decoder(list[insert]), msgspec.json.Decoder(list[message])  # type: ignore[valid-type]


def parse_whole_inserts(body: bytes, columns: tuple[str, ...], check: Check | None = None) -> WholeInserts | None:
    """The snapshot fast path: ``body`` as WholeInserts if every change in it inserts exactly
    ``columns`` (each a string or null) and every other message is a control, else None (then
    ``messages.parse_body`` decides what the body is, and says what is wrong with it).

    msgspec checks the columns and value types in C without building a dict per row, and
    ``up-to-date`` must still be the last message. The body is read in pieces of about ``PIECE``
    bytes (replica.protocol.framing), each passed to ``check`` and freed before the next: the objects of a
    whole ~10 MB body are ~5x its size, fresh memory for the kernel to fault in every time. An
    error ``check`` raises is raised once the whole body has been read, so a body that is broken
    further on still goes to ``parse_body``, as it would read whole.
    """
    runs = framing.pieces(body, 0, len(body), PIECE)
    whole = _parse(body, runs, columns, check)
    if whole is None and len(runs) > 1:
        whole = _parse(body, [(0, len(body))], columns, check)  # in case a cut guessed wrong (cuts)
    return whole


def _parse(
    body: bytes, runs: list[tuple[int, int]], columns: tuple[str, ...], check: Check | None
) -> WholeInserts | None:
    inserts, messages = _decoders(columns)
    count, up_to_date = 0, False
    controls: list[dict[str, Any]] = []
    failed: ProtocolError | None = None
    # The decoded objects are msgspec structs with gc=False and strings: nothing for the cyclic
    # collector to track, so a body costs it nothing (it stays on, as the host app set it).
    for start, end in runs:
        if up_to_date:
            return None  # up-to-date must be last: parse_body reports it
        found = _piece(inserts, messages, framing.run_bytes(body, start, end), controls)
        if found is None:
            return None
        keys, rows, up_to_date = found
        if check is not None and failed is None and keys:
            try:
                check(keys, rows, count)
            except ProtocolError as exc:  # raised below, once the body is known to be whole inserts
                failed = exc
        count += len(keys)
        del found, keys, rows  # before the next piece is decoded: its memory is reused, not fresh
    if not count:
        return None
    if failed is not None:
        raise failed
    return WholeInserts(InsertBody(body, count, columns), up_to_date, controls)


def _piece(
    inserts: msgspec.json.Decoder[Any], messages: msgspec.json.Decoder[Any], text: bytes,
    controls: list[dict[str, Any]],
) -> tuple[list[str], list[Any], bool] | None:
    """A piece's (keys, rows, up-to-date), its controls' headers added to ``controls``; None if it is
    not whole inserts and controls."""
    try:
        decoded = inserts.decode(text)
    except (msgspec.DecodeError, ValueError, RecursionError):
        pass
    else:
        return [m.key for m in decoded], [m.value for m in decoded], False
    try:
        decoded = messages.decode(text)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return None
    keys, rows = [], []
    up_to_date = False
    for message in decoded:
        if up_to_date:
            return None  # up-to-date must be last: parse_body reports it
        if message.key is not msgspec.UNSET:
            if message.headers.operation is msgspec.UNSET or message.value is msgspec.UNSET:
                return None
            keys.append(message.key)
            rows.append(message.value)
        elif message.headers.control is msgspec.UNSET or message.value is not msgspec.UNSET:
            return None  # an event, or something parse_body should judge
        else:
            up_to_date = message.headers.control == UP_TO_DATE
            fields = msgspec.structs.asdict(message.headers)
            controls.append({k: v for k, v in fields.items() if v is not msgspec.UNSET})
    return keys, rows, up_to_date
