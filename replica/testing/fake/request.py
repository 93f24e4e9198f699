"""Parsing and validating ``/v1/shape`` query parameters the way Electric does (spec §1.2).

Errors are collected per field, as Electric reports them:
``{"message": "Invalid request", "errors": {field: [message, …]}}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from replica.protocol import wire
from replica.testing.fake.shapes import ShapeDef, parse_columns, resolver
from replica.testing.fake.tables import Table
from replica.testing.fake.where import WhereError

__all__ = ["InvalidRequest", "ShapeRequest", "is_true", "parse_shape_request", "phase_of"]

_PARAM_KEY = re.compile(r"params\[([^\]]*)\]")
_SSE_PARAMS = (wire.P_LIVE_SSE, wire.P_EXPERIMENTAL_LIVE_SSE)


class InvalidRequest(Exception):
    """A 400: ``errors`` maps a parameter to its messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


def is_true(params: dict[str, str], name: str) -> bool:
    """Electric's boolean params: present with any value except the literal ``false``."""
    return name in params and params[name] != "false"


def phase_of(params: dict[str, str]) -> str:
    """The fault phase of a request, from its raw parameters (see ``Fault``)."""
    offset = params.get(wire.P_OFFSET, wire.OFFSET_BEFORE_ALL)
    if offset in (wire.OFFSET_BEFORE_ALL, wire.OFFSET_NOW, "-1_0"):
        return "initial"
    if is_true(params, wire.P_LIVE):
        return "live"
    return "snapshot" if offset.startswith("0_") and not offset.endswith("_inf") else "catchup"


@dataclass(frozen=True)
class ShapeRequest:
    """A valid shape request. ``offset`` is None for ``offset=now``."""

    definition: ShapeDef
    offset_text: str
    offset: wire.Offset | None
    handle: str | None
    live: bool
    cursor: int | None
    sse: bool = False  # live=true&live_sse=true: answered as a Server-Sent Events stream

    @property
    def is_now(self) -> bool:
        return self.offset is None


def parse_shape_request(
    params: dict[str, str],
    pairs: Sequence[tuple[str, str]],
    find_table: Callable[[str, str], Table | None],
) -> ShapeRequest:
    """Validate the query; raises InvalidRequest with Electric's field messages."""
    errors: dict[str, list[str]] = {}

    def error(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    table = _table(params, find_table, error)
    offset_text = params.get(wire.P_OFFSET)
    offset: wire.Offset | None = None
    if not offset_text:
        error(wire.P_OFFSET, "can't be blank")
    elif offset_text != wire.OFFSET_NOW:
        try:
            offset = wire.Offset.parse(offset_text)
        except ValueError:
            error(wire.P_OFFSET, "has invalid format")
    initial = offset_text == wire.OFFSET_NOW or offset == wire.BEFORE_ALL
    handle = params.get(wire.P_HANDLE) or None
    if initial:
        handle = None  # Electric drops it, so it can serve as a cache-key differentiator
    elif handle is None and offset is not None:
        error(wire.P_HANDLE, "can't be blank when offset != -1")
    live = is_true(params, wire.P_LIVE)
    if live and offset == wire.BEFORE_ALL:
        error(wire.P_LIVE, "can't be true when offset == -1")
    if live and offset_text == wire.OFFSET_NOW:
        error(wire.P_LIVE, "can't be true when offset is 'now'")
    sse = any(is_true(params, name) for name in _SSE_PARAMS)
    if sse and not live:
        error(wire.P_LIVE_SSE, "can't be true unless live is also true")
    replica = params.get(wire.P_REPLICA, wire.REPLICA_DEFAULT)
    if replica not in (wire.REPLICA_DEFAULT, wire.REPLICA_FULL):
        error(wire.P_REPLICA, "is invalid")
    log = params.get(wire.P_LOG, wire.LOG_FULL)
    if log not in (wire.LOG_FULL, wire.LOG_CHANGES_ONLY):
        error(wire.P_LOG, "is invalid")
    if any(name.startswith("subset__") for name in params):
        error("subset", "subset snapshots are not supported by FakeElectric")
    values = _params(pairs, error)
    columns = _columns(params, table, error) if table is not None else None
    where = params.get(wire.P_WHERE) or None

    cursor: int | None = None
    if params.get(wire.P_CURSOR, "").isdigit():
        cursor = int(params[wire.P_CURSOR])
    definition = ShapeDef(
        schema=table.schema if table else "",
        table=table.name if table else "",
        where=where,
        params=values or (),
        columns=columns,
        replica=replica,
        log=log,
    )
    if table is not None and values is not None and wire.P_WHERE not in errors:
        try:
            definition.predicate(table, resolver(find_table))
        except WhereError as exc:
            error(wire.P_WHERE, str(exc))
    if errors:
        raise InvalidRequest(errors)
    return ShapeRequest(definition, offset_text or "", offset, handle, live, cursor, sse)


def _table(params: dict[str, str], find: Callable[[str, str], Table | None], error: Callable[[str, str], None]) -> Table | None:
    text = params.get(wire.P_TABLE)
    if not text:
        error(wire.P_TABLE, "can't be blank")
        return None
    try:
        schema, name = wire.parse_table(text)
    except ValueError:
        error(wire.P_TABLE, "Invalid zero-length delimited identifier" if '""' in text else "is invalid")
        return None
    table = find(schema, name)
    if table is None:
        error(
            wire.P_TABLE,
            f'Table "{schema}"."{name}" does not exist. If the table name contains capitals or special '
            "characters you must quote it.",
        )
    return table


def _params(pairs: Sequence[tuple[str, str]], error: Callable[[str, str], None]) -> tuple[str, ...] | None:
    found: dict[str, str] = {}
    for name, value in pairs:
        match = _PARAM_KEY.fullmatch(name)
        if match:
            found[match.group(1)] = value
    if not found:
        return ()
    if not all(key.isdigit() for key in found):
        error(wire.P_PARAMS, "Parameters can only use numbers as keys")
        return None
    numbers = sorted(int(key) for key in found)
    if numbers != list(range(1, len(numbers) + 1)):
        error(wire.P_PARAMS, "Parameters must be numbered sequentially, starting from 1")
        return None
    by_number = {int(key): value for key, value in found.items()}
    return tuple(by_number[n] for n in numbers)


def _columns(params: dict[str, str], table: Table, error: Callable[[str, str], None]) -> tuple[str, ...] | None:
    if wire.P_COLUMNS not in params:
        return None
    try:
        names = parse_columns(params[wire.P_COLUMNS])
    except ValueError as exc:
        error(wire.P_COLUMNS, str(exc))
        return None
    unknown = [name for name in names if name not in table.columns]
    if unknown:
        error(wire.P_COLUMNS, f"The following columns could not be found: {', '.join(unknown)}")
        return None
    missing = [column for column in table.pk if column not in names]
    if missing:
        error(wire.P_COLUMNS, f"The list of columns must include all primary key columns, missing: {', '.join(missing)}")
        return None
    chosen = set(names)
    return tuple(column for column in table.columns if column in chosen)
