"""The in-process ceiling: the recorded bodies decoded and written with apsw, no HTTP, no staging.

    ceiling.py FOLDER [VARIANT...] [--keep DIR]
                         prints one JSON line: {variant: rows_per_s, ..., "best": name};
                         --keep DIR leaves each variant's database in DIR/<variant>.db (for tests)

Every variant produces the same typed table as replica (the README's type map, via
replica.schema's converters) in a WAL database with synchronous=NORMAL, one transaction per body:
  json+rows         stdlib json, per-row conversion, executemany upsert
  msgspec+columns   msgspec decode, column-wise conversion, executemany upsert
  msgspec+thread    as above, with SQLite writes on a second thread (apsw releases the GIL)
  msgspec+json      msgspec decode, column-wise conversion on the main thread (arrays included), the rows
                    re-encoded as one JSON array per body that a writer thread upserts with one
                    INSERT … SELECT over json_each (bytea as hex through unhex): no Python per value
                    anywhere in SQLite, so the writer never waits for the GIL (issue 17's plain ingest)
  jsonb+sql         no Python per row: one INSERT … SELECT per body over jsonb_each, the type map in
                    SQL (replica.sqlconvert, the same expressions replica stages with), upsert
  jsonb+sql+ahead   as replica converts a snapshot (replica.scratch): each body cut in halves that two
                    worker threads convert into in-memory databases while the previous body is
                    copied in; the copy upserts
Bodies are read from disk inside the timing (page cache: negligible). The process is tuned as the
replica CLI tunes its own (replica.tuning).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import apsw
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data

from replica.fast import convert as scratch
from replica.tuning import tune_process
from replica.typemap import sql as sqlconvert
from replica.typemap.schema import TableSchema, create_table_sql, quote_ident
from replica.typemap.values import FLOAT_TYPES


class Msg(msgspec.Struct, gc=False):
    headers: dict[str, Any]
    key: str | None = None
    value: dict[str, str | None] | None = None


def open_db(path: str, table: str, schema: TableSchema) -> apsw.Connection:
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI  # to ATTACH memdb parts
    conn = apsw.Connection(path, flags=flags)
    conn.create_scalar_function(sqlconvert.CONVERT_FUNCTION, sqlconvert.convert_by_spec, 2, deterministic=True)
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", "NORMAL")
    conn.execute(create_table_sql(table, schema))
    return conn


def upsert_sql(table: str, schema: TableSchema) -> str:
    names = ", ".join(quote_ident(c) for c in schema.names)
    marks = ", ".join("?" for _ in schema.names)
    rest = ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in schema.names if c not in schema.pk)
    pk = ", ".join(quote_ident(c) for c in schema.pk)
    return f"INSERT INTO {quote_ident(table)} ({names}) VALUES ({marks}) ON CONFLICT ({pk}) DO UPDATE SET {rest}"


def json_rows(bodies: list[Path], conn: apsw.Connection, sql: str, schema: TableSchema) -> None:
    names = schema.names
    for path in bodies:
        messages = json.loads(path.read_bytes())
        rows = []
        for m in messages:
            if "key" in m:
                row = schema.convert_row(m["value"])
                rows.append([row[c] for c in names])
        with conn:
            conn.executemany(sql, rows)


def decode_columns(path: Path, decoder: Any, schema: TableSchema) -> list[tuple[Any, ...]]:
    import gc

    gc.disable()
    try:
        messages = decoder.decode(path.read_bytes())
    finally:
        gc.enable()
    return schema.convert_full_rows([m.value for m in messages if m.key is not None])


def msgspec_columns(bodies: list[Path], conn: apsw.Connection, sql: str, schema: TableSchema) -> None:
    decoder = msgspec.json.Decoder(list[Msg])
    for path in bodies:
        rows = decode_columns(path, decoder, schema)
        with conn:
            conn.executemany(sql, rows)


def msgspec_thread(bodies: list[Path], conn: apsw.Connection, sql: str, schema: TableSchema) -> None:
    decoder = msgspec.json.Decoder(list[Msg])
    work: queue.Queue[list[tuple[Any, ...]] | None] = queue.Queue(maxsize=1)

    def writer() -> None:
        while (rows := work.get()) is not None:
            with conn:
                conn.executemany(sql, rows)

    thread = threading.Thread(target=writer)
    thread.start()
    for path in bodies:
        work.put(decode_columns(path, decoder, schema))
    work.put(None)
    thread.join()


def json_select(schema: TableSchema) -> tuple[str, list[Any]]:
    """The SELECT reading ``msgspec_json``'s rows from JSON, and per column how to make a value JSON-safe."""
    exprs, fixes = [], []
    for i, column in enumerate(schema.columns):
        x = f"r.value ->> {i}"
        fix: Any = None
        if column.override != "text" and not column.dims and column.type == "bytea":
            x, fix = f"unhex({x})", bytes.hex
        elif column.override == "real" or (column.override is None and not column.dims and column.type in FLOAT_TYPES):
            # JSON has no infinities: they travel as strings (NaN is already the text 'NaN').
            x = f"CASE {x} WHEN 'Infinity' THEN 9e999 WHEN '-Infinity' THEN -9e999 ELSE {x} END"
            fix = _finite
        exprs.append(x)
        fixes.append(fix)
    return f"SELECT {', '.join(exprs)} FROM json_each(?1) AS r WHERE true", fixes


def _finite(value: float | str) -> float | str:
    if value == math.inf:
        return "Infinity"
    return "-Infinity" if value == -math.inf else value


def msgspec_json(bodies: list[Path], conn: apsw.Connection, sql: str, schema: TableSchema) -> None:
    decoder = msgspec.json.Decoder(list[Msg])
    select, fixes = json_select(schema)
    insert = upsert_from(sql, select)
    work: queue.Queue[str | None] = queue.Queue(maxsize=1)

    def writer() -> None:
        while (text := work.get()) is not None:
            with conn:
                conn.execute(insert, (text,))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for path in bodies:
            rows = decode_columns(path, decoder, schema)
            if any(fixes):
                columns: list[Any] = list(zip(*rows, strict=True))
                for i, fix in enumerate(fixes):
                    if fix is not None:
                        columns[i] = [None if v is None else fix(v) for v in columns[i]]
                rows = list(zip(*columns, strict=True))
            work.put(msgspec.json.encode(rows).decode())  # text: SQLite would read a BLOB as JSONB
    finally:
        work.put(None)
        thread.join()


def upsert_from(sql: str, select: str) -> str:
    """The upsert ``sql`` (INSERT … VALUES … ON CONFLICT …) taking its rows from ``select``."""
    head, tail = sql.split(" VALUES ", 1)
    return f"{head} {select} ON CONFLICT {tail.split(' ON CONFLICT ', 1)[1]}"


def jsonb_sql(bodies: list[Path], conn: apsw.Connection, sql: str, schema: TableSchema) -> None:
    insert = upsert_from(sql, sqlconvert.bulk_select_sql(schema))  # the same SELECT replica stages with
    for path in bodies:
        with conn:
            conn.execute(insert, (path.read_text(),))


def jsonb_sql_ahead(bodies: list[Path], conn: apsw.Connection, sql: str, schema: TableSchema) -> None:
    converter = scratch.Converter()
    aheads = [converter.start(bodies[0].read_bytes(), schema)]
    try:
        for i in range(len(bodies)):
            if i + 1 < len(bodies):  # the next body converts while this one is copied
                aheads.append(converter.start(bodies[i + 1].read_bytes(), schema))
            ahead = aheads[i]
            parts = ahead.parts() if ahead is not None else None
            assert parts, f"{bodies[i]}: the conversion failed"
            for n, part in enumerate(parts):
                conn.execute(f"ATTACH ? AS {sqlconvert.attached_name(n)}", (part.uri,))
            with conn:
                for n in range(len(parts)):
                    conn.execute(upsert_from(sql, sqlconvert.attached_select(len(schema.names), "", sqlconvert.attached_name(n))))
            for n, part in enumerate(parts):
                conn.execute(f"DETACH {sqlconvert.attached_name(n)}")
                part.close()
            aheads[i] = None
    finally:
        converter.close()


VARIANTS = {"json+rows": json_rows, "msgspec+columns": msgspec_columns, "msgspec+thread": msgspec_thread,
            "msgspec+json": msgspec_json,
            "jsonb+sql": jsonb_sql, "jsonb+sql+ahead": jsonb_sql_ahead}


def main() -> None:
    tune_process()  # as the replica CLI does: the ceiling gets every process-wide setting replica gets
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("variants", nargs="*", metavar="VARIANT", help=f"some of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--keep", type=Path, help="write each variant's database into this folder and keep it")
    args = parser.parse_args()
    if unknown := set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    folder = args.folder
    index = json.loads((folder / "index.json").read_text())
    table, rows = index["dataset"], index["rows"]
    schema = TableSchema.from_electric(index["schema"])
    bodies = [path for _headers, path in data.bodies(folder)]
    result: dict[str, Any] = {}
    only = args.variants or list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in only:
            path = os.path.join(args.keep or tmp, f"{name}.db")
            conn = open_db(path, table, schema)
            started = time.perf_counter()
            VARIANTS[name](bodies, conn, upsert_sql(table, schema), schema)
            elapsed = time.perf_counter() - started
            count = conn.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0]
            conn.close()
            assert count == rows, (name, count, rows)
            result[name] = round(rows / elapsed)
    result["best"] = max(only, key=lambda n: result[n])
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
