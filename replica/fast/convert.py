"""Snapshot rows converted ahead of the writer, on worker threads, into in-memory databases.

Reading and converting a ~10 MB snapshot body in SQL (replica.typemap.sql) is most of an initial
sync. Inside the writer's transaction it would wait for the body to be validated, and then hold
up the next one. So the sync loop starts it as soon as a body arrives: the body is cut into halves at
message boundaries, and two worker threads run the same ``INSERT … SELECT`` over one half each,
into private in-memory databases (SQLite's ``memdb``, no GIL held), while the protocol core
validates the body and the writer finishes the previous one. The writer then ATTACHes those
databases before its transaction and copies the rows in, which costs about a tenth of
converting them.

Nothing here touches the store's file, so converting a body that then fails validation costs
only the time. A conversion that fails (a value only the Python converters can judge, or an
escaped NUL, which the SQL misreads: ``InsertBody.nul_escapes``) is dropped, and the writer
takes its usual route, which names the value. The rows are used only for the commit made of the
very same body read with an equal TableSchema (``Conversion.parts_for``).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import apsw

from replica.protocol import framing
from replica.protocol.snapshot import NUL_ESCAPE, InsertBody
from replica.typemap import sql
from replica.typemap.schema import TableSchema
from replica.typemap.sql import attached_name

__all__ = ["Attached", "Conversion", "Converted", "Converter", "attached", "convert", "register"]

PARTS = 2  # halves: one per core of a small machine, and half a body's memory each
MIN_PART = 256 * 1024  # smaller bodies convert in one part
PIECE = 512 * 1024  # a part converts in pieces of about this size: under glibc's mmap threshold (see convert)
_names = itertools.count()
_OPEN = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI


def _libc_memmem() -> Any:
    try:
        memmem = ctypes.CDLL(None).memmem  # the C library's, where the process has one (not Windows)
    except (OSError, AttributeError, TypeError):
        return None
    memmem.restype = ctypes.c_void_p
    memmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return memmem


_memmem = _libc_memmem()
_ESCAPED_NUL = b"\\u0000"  # the six bytes NUL_ESCAPE matches


def register(conn: apsw.Connection) -> None:
    """Give ``conn`` the SQL function the type map falls back to for unusual forms (``typemap.sql``)."""
    conn.create_scalar_function(sql.CONVERT_FUNCTION, sql.convert_by_spec, 2, deterministic=True)  # type: ignore[arg-type]


def nul_escape(body: bytes, start: int, end: int) -> bool:
    """True if ``body[start:end]`` holds an escaped NUL (``\\u0000``), as ``InsertBody.nul_escapes`` asks.

    The C library's memmem, where there is one: ~2x faster than ``re`` over a ~10 MB body, and
    ctypes lets go of the GIL while it runs, so the writer and the parser are not held up.
    """
    if _memmem is None:
        return NUL_ESCAPE.search(body, start, end) is not None
    address = ctypes.cast(ctypes.c_char_p(body), ctypes.c_void_p).value  # body's own bytes: no copy
    assert address is not None
    return _memmem(address + start, end - start, _ESCAPED_NUL, len(_ESCAPED_NUL)) is not None


class Converted:
    """The rows of one part of a body, converted and held in a process-private in-memory database."""

    def __init__(self, conn: apsw.Connection, uri: str) -> None:
        self._conn = conn  # keeps the memdb alive until closed
        self.uri = uri

    def close(self) -> None:
        self._conn.close()


def convert(body: bytes, start: int, end: int, schema: TableSchema) -> Converted | None:
    """Run the bulk SELECT of ``schema`` over ``body[start:end]`` into a new in-memory database;
    None if SQLite cannot (the writer's own route then decides, and reports a bad value by name)."""
    select = sql.bulk_select_sql(schema, defer=True)
    if select is None or nul_escape(body, start, end):
        return None
    # memdb databases named with a leading "/" are shared within this process, so the writer can ATTACH one.
    uri = f"file:/replica-scratch-{os.getpid()}-{next(_names)}?vfs=memdb"
    conn = None
    try:
        conn = apsw.Connection(uri, flags=_OPEN)
        register(conn)
        # Untyped columns store each value exactly as converted; the copy applies the table's affinity.
        conn.execute(f"CREATE TABLE rows ({', '.join(f'c{i}' for i in range(len(schema.names)))})")
        # Piece by piece: the text, its binding and SQLite's JSONB of a ~5 MB part would each be a
        # fresh mmap for the kernel to fault in and zero; a piece's come from (and go back to) the
        # heap. Not cached: a cached statement would keep its binding alive.
        for a, b in framing.pieces(body, start, end, PIECE):
            conn.execute(f"INSERT INTO rows {select}", (framing.run_text(body, a, b),), can_cache=False)
        resolve(conn, schema)
        conn.execute("PRAGMA shrink_memory")  # the page cache: the rows are in the memdb itself
    except (apsw.Error, ValueError, TypeError, RecursionError, OverflowError, MemoryError):
        # Invalid JSON, a value the type map refuses, out of memory: nothing was written anywhere,
        # and the writer's own route decides (and names a bad value).
        if conn is not None:
            conn.close()
        return None
    return Converted(conn, uri)


def resolve(conn: apsw.Connection, schema: TableSchema, table: str = "rows") -> None:
    """Fill in the misses the SQL left in ``table`` (``sql.column_sql(…, defer=True)``): each column's in one batch.

    Calling the Python converter from SQL once per value made each value wait for the GIL, which
    the main thread holds while it parses the next body (issue 17: the workers mostly waited).
    Here the misses are read as one JSON text, converted by the same converters, and written back
    with one UPDATE: the GIL is taken once per column and part. One scan first asks whether there
    is any miss at all (narrow rows have none: a scan per column cost ~5 % of converting them).
    """
    columns = [i for i, column in enumerate(schema.columns) if sql.deferrable(column)]
    if not columns or conn.execute(sql.any_miss_sql(columns, table)).fetchone() == (0,):
        return
    for i in columns:
        row = conn.execute(sql.misses_sql(i, table)).fetchone()
        if row is None or row[0] == "[]":
            continue
        column = schema.columns[i]
        convert = column.converter()
        values = [[rowid, _json_safe(convert(text))] for rowid, text in json.loads(row[0])]
        filled = json.dumps(values, ensure_ascii=False, allow_nan=False)
        conn.execute(sql.resolve_sql(i, sql.real_column(column), table), (filled,))


def _json_safe(value: object) -> object:
    """JSON has no infinities: they travel as text, which ``sql.resolve_sql`` turns back into REALs."""
    if value == math.inf:
        return "Infinity"
    return "-Infinity" if value == -math.inf else value


class Conversion:
    """A conversion under way for one response body; only the commit made of that body may use it."""

    def __init__(self, body: bytes, table: TableSchema, futures: list[Future[Converted | None]]) -> None:
        self._body = body
        self._table = table
        self._futures = futures

    def parts_for(self, changes: object, table: TableSchema | None) -> list[Converted] | None:
        """The converted parts if ``changes`` are this very body read with an equal ``table``
        (waiting for them), else None. Dropping a Conversion unused is fine: its rows are freed
        once the workers finish."""
        if not isinstance(changes, InsertBody) or changes.body is not self._body or table != self._table:
            return None
        return self.parts()

    def parts(self) -> list[Converted] | None:
        """The converted parts of this body, in order (waiting for them); None if any failed."""
        try:
            parts = [future.result() for future in self._futures]
        except CancelledError:  # the store is closing
            return None
        done = [part for part in parts if part is not None]
        if len(done) < len(parts):
            for part in done:
                part.close()
            return None
        return done


class Converter:
    """Runs conversions on ``workers`` threads, in the order they were started."""

    def __init__(self, workers: int = PARTS) -> None:
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None  # started with the first conversion
        self._closed = False
        self._lock = threading.Lock()

    def start(self, body: bytes, schema: TableSchema) -> Conversion | None:
        """Begin converting ``body`` for ``schema`` (returns at once); None once closed."""
        with self._lock:
            if self._closed or self._workers < 1:
                return None
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="replica-convert")
            parts = framing.split(body, self._workers, MIN_PART)
            return Conversion(body, schema, [self._executor.submit(convert, body, a, b, schema) for a, b in parts])

    def close(self) -> None:
        """Stop the workers, waiting for conversions that are running; start() does nothing after."""
        with self._lock:
            executor, self._executor, self._closed = self._executor, None, True
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Attached:
    """Converted parts attached to the writer's connection: their schema names, in log order."""

    names: tuple[str, ...]


@contextmanager
def attached(conn: apsw.Connection, parts: list[Converted] | None) -> Iterator[Attached | None]:
    """Attach ``parts`` to ``conn`` for the duration (None if there are none, or they cannot be), then free them.

    Use it around the transaction that copies them (DETACH fails inside one), and hand what it
    yields to ``bulk.write_inserts`` with the commit the parts were converted for.
    """
    if not parts:
        yield None
        return
    with ExitStack() as stack:
        for part in parts:
            stack.callback(part.close)
        names: list[str] = []
        try:
            for i, part in enumerate(parts):
                conn.execute(f"ATTACH ? AS {attached_name(i)}", (part.uri,))
                names.append(attached_name(i))
        except apsw.Error:  # e.g. the name is taken (a DETACH that failed): the usual route converts the body itself
            _detach(conn, names)
            names = []
        try:
            yield Attached(tuple(names)) if len(names) == len(parts) else None
        finally:
            _detach(conn, names)


def _detach(conn: apsw.Connection, names: list[str]) -> None:
    for name in names:
        with suppress(apsw.Error):  # one that fails stays attached, harmlessly, until the connection closes
            conn.execute(f"DETACH {name}")
