"""Snapshot chunks: bodies of whole-row inserts, validated without building a Change per row.

An initial sync is ~10 MB bodies of nothing but inserts. ``parse_whole_inserts`` checks such a
body with msgspec against the shape's columns (in C, no dict per row) and returns the changes as
``BodyChanges``: the body itself, which the store lets SQLite read (replica.sqlconvert), parsed
into Change values only if something asks for them. Anything else is ``wire.parse_body``'s job.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property, lru_cache
from typing import Any, Literal, NamedTuple, overload

import msgspec

from replica.protocol import framing as cuts
from replica.errors import ProtocolError
from replica.protocol.wire import UP_TO_DATE, Change, parse_body

__all__ = ["NUL_ESCAPE", "PIECE", "BodyChanges", "Check", "WholeInserts", "parse_whole_inserts"]

PIECE = 128 * 1024  # validated in pieces of about this size: its objects stay in the CPU cache
NUL_ESCAPE = re.compile(rb"\\u0000")  # re finds it faster than ``in`` over a JSON body (1.4-2.4x for "\\u")


class BodyChanges(Sequence[Change]):
    """The changes of a validated body, kept as the body itself and parsed again only if read.

    A snapshot chunk is ~10 MB of JSON but ~5x that as Python objects; the store lets SQLite
    read whole-row inserts straight from ``body`` (replica.sqlconvert), so holding the parsed
    form while the next chunk downloads and parses would only double the peak memory.
    """

    def __init__(self, body: bytes, count: int, columns: frozenset[str]) -> None:
        self.body = body
        self.columns = columns  # every change is an insert of exactly these columns
        self._count = count
        self._parsed: list[Change] | None = None
        # (the bulk SELECT, how many parts) while the store has these rows already converted and
        # attached to its connection (replica.scratch); None otherwise.
        self.converted: tuple[str, int] | None = None

    def _changes(self) -> list[Change]:
        if self._parsed is None:
            self._parsed = [m for m in parse_body(self.body) if isinstance(m, Change)]
        return self._parsed

    @cached_property
    def nul_escapes(self) -> bool:
        """True if the body may hold an escaped NUL (``\\u0000``): such bodies take the Python path.

        SQLite stores a NUL inside text as Python does, but ``length()`` and ``GLOB`` stop at it,
        so the type map's SQL fast paths would misread such a value (sqlconvert). Postgres text
        cannot hold a NUL, so this is only ever a hostile body. Other escapes read alike: a lone
        surrogate never gets here (msgspec refuses it), the rest decode to what Python decodes.
        """
        return NUL_ESCAPE.search(self.body) is not None  # asked once: ~0.5 ms per MB

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Change]:
        return iter(self._changes())

    @overload
    def __getitem__(self, index: int) -> Change: ...
    @overload
    def __getitem__(self, index: slice) -> list[Change]: ...
    def __getitem__(self, index: int | slice) -> Change | list[Change]:
        return self._changes()[index]

    def __repr__(self) -> str:
        return f"BodyChanges({self._count} changes, {len(self.body)} bytes)"


class WholeInserts(NamedTuple):
    """A body of whole-row inserts (and controls), validated but not turned into Change values."""

    changes: BodyChanges
    up_to_date: bool


# check(keys, rows, first): a piece's changes, in log order; ``rows[i]`` holds the values of
# ``keys[i]`` as attributes ``f0``, ``f1``… in column order, and ``first`` is the index of
# ``keys[0]`` among the body's changes.
Check = Callable[[list[str], list[Any], int], None]


class _InsertHeaders(msgspec.Struct, gc=False):
    operation: Literal["insert"] | msgspec.UnsetType = msgspec.UNSET
    control: str | msgspec.UnsetType = msgspec.UNSET


class _InsertOnlyHeaders(msgspec.Struct, gc=False):
    operation: Literal["insert"]


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
    return msgspec.json.Decoder(list[insert]), msgspec.json.Decoder(list[message])


def parse_whole_inserts(body: bytes, columns: tuple[str, ...], check: Check | None = None) -> WholeInserts | None:
    """The snapshot fast path: ``body`` as WholeInserts if every change in it inserts exactly
    ``columns`` (each a string or null) and every other message is a control, else None (then
    ``parse_body`` decides what the body is, and says what is wrong with it).

    msgspec checks the columns and value types in C without building a dict per row, and
    ``up-to-date`` must still be the last message. The body is read in pieces of about ``PIECE``
    bytes (replica.cuts), each passed to ``check`` and freed before the next: the objects of a
    whole ~10 MB body are ~5x its size, fresh memory for the kernel to fault in every time. An
    error ``check`` raises is raised once the whole body has been read, so a body that is broken
    further on still goes to ``parse_body``, as it would read whole.
    """
    runs = cuts.pieces(body, 0, len(body), PIECE)
    whole = _parse(body, runs, columns, check)
    if whole is None and len(runs) > 1:
        whole = _parse(body, [(0, len(body))], columns, check)  # in case a cut guessed wrong (cuts)
    return whole


def _parse(
    body: bytes, runs: list[tuple[int, int]], columns: tuple[str, ...], check: Check | None
) -> WholeInserts | None:
    inserts, messages = _decoders(columns)
    count, up_to_date = 0, False
    failed: ProtocolError | None = None
    enabled = gc.isenabled()
    gc.disable()  # as in parse_body: the objects are acyclic
    try:
        for start, end in runs:
            if up_to_date:
                return None  # up-to-date must be last: parse_body reports it
            found = _piece(inserts, messages, cuts.run_bytes(body, start, end))
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
    finally:
        if enabled:
            gc.enable()
    if not count:
        return None
    if failed is not None:
        raise failed
    return WholeInserts(BodyChanges(body, count, frozenset(columns)), up_to_date)


def _piece(
    inserts: msgspec.json.Decoder[Any], messages: msgspec.json.Decoder[Any], text: bytes
) -> tuple[list[str], list[Any], bool] | None:
    """A piece's (keys, rows, up-to-date); None if it is not whole inserts and controls."""
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
    return keys, rows, up_to_date
