"""What the Postgres dev server asks Postgres: connections under Electric's session settings,
tables and their electric-schema from the catalog, ``where`` clauses, and consistent snapshots.

Values are Postgres's own text output under Electric's session settings (electric-protocol.md
§3.5), so the type map is tested against the real thing rather than our idea of it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from replica.testing.fake.tables import Row, Table
from replica.testing.fake.where import WhereError

T = TypeVar("T")

__all__ = ["PgConn", "PgTable", "Snapshot", "quote_ident", "read_tables"]

# Electric's display settings (E:.../postgres.ex): the text every value is sent in.
SESSION_SETTINGS = {
    "bytea_output": "hex",
    "DateStyle": "ISO, DMY",
    "TimeZone": "UTC",
    "extra_float_digits": "1",
    "IntervalStyle": "iso_8601",
    "application_name": "replica-dev-server",
}
BOOL_OID = 16

Fingerprint = tuple[Any, ...]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgConn:
    """One autocommit connection with Electric's session settings, shared under a lock.

    ``read_only`` connections default every transaction to READ ONLY, so a ``where`` clause
    (user text that we run as SQL) cannot write even through a function it calls.
    """

    def __init__(self, dsn: str, *, read_only: bool) -> None:
        self.dsn = dsn
        self.read_only = read_only
        self.lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None

    def connection(self) -> psycopg.Connection[Any]:
        """The live connection, reconnecting after a failure. Call with ``lock`` held."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            # RawCursor: our SQL uses Postgres's own $n placeholders (a where clause brings its
            # own $1, $2 …) and % is an ordinary character (LIKE 'a%').
            conn = psycopg.connect(self.dsn, autocommit=True, cursor_factory=psycopg.RawCursor)
            settings = dict(SESSION_SETTINGS, default_transaction_read_only="on" if self.read_only else "off")
            for name, value in settings.items():
                conn.execute("SELECT set_config($1, $2, false)", [name, value])
            self._conn = conn
        return self._conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.connection().execute(sql, params).fetchall()  # type: ignore[arg-type]

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# --- tables ---

_TABLES_SQL = """
SELECT c.oid::int8, n.nspname, c.relname, c.relreplident::text,
  coalesce((SELECT json_agg(json_build_object(
      'name', a.attname,
      'typname', CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN et.typname ELSE t.typname END,
      'array', t.typcategory = 'A' AND t.typelem <> 0,
      'dims', a.attndims, 'typmod', a.atttypmod, 'typid', a.atttypid::int8, 'not_null', a.attnotnull,
      'sqltype', format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum)
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type et ON et.oid = t.typelem
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'::json),
  coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND """


def _typmod_details(typname: str, typmod: int) -> dict[str, int]:
    """electric-schema's typmod keys (protocol §3.5): max_length, length, precision, scale, type_mod."""
    if typmod < 0:
        return {}
    if typname == "varchar":
        return {"max_length": typmod - 4}
    if typname == "bpchar":
        return {"length": typmod - 4}
    if typname in ("bit", "varbit"):
        return {"length": typmod}
    if typname in ("time", "timetz", "timestamp", "timestamptz"):
        return {"precision": typmod}
    if typname == "interval":
        precision = typmod & 0xFFFF
        return {} if precision == 0xFFFF else {"precision": precision}
    if typname == "numeric":
        packed = typmod - 4
        # The scale is an 11-bit signed number since Postgres 15 (numeric(5,-2)).
        return {"precision": (packed >> 16) & 0xFFFF, "scale": ((packed & 0x7FF) ^ 1024) - 1024}
    return {"type_mod": typmod}


class PgTable(Table):
    """A Postgres table as the fake's ``Table``: columns as electric-schema entries from the
    catalog, plus what the server needs to query it. ``rows`` stays empty: rows live in Postgres."""

    def __init__(self, row: tuple[Any, ...], conn: PgConn) -> None:
        oid, schema, name, replident, columns, pk = row
        specs: dict[str, dict[str, Any]] = {}
        for column in columns:
            spec: dict[str, Any] = {"type": column["typname"]}
            if column["array"]:
                # attndims is 0 for arrays declared through some paths (CREATE TABLE AS); still an array.
                spec["dims"] = max(1, int(column["dims"]))
            if column["name"] in pk:
                spec["pk_index"] = pk.index(column["name"])
            if column["not_null"]:
                spec["not_null"] = True
            spec.update(_typmod_details(column["typname"], int(column["typmod"])))
            specs[column["name"]] = spec
        super().__init__(schema, name, specs)
        self.oid = int(oid)
        self.replident = str(replident)
        self.sqltypes: dict[str, str] = {c["name"]: c["sqltype"] for c in columns}
        #: Changes to any of this rotate the table's shapes (a schema change: Electric answers 409).
        self.fingerprint: Fingerprint = fingerprint(row)
        self._conn = conn
        self._compiled: dict[tuple[str, tuple[str, ...]], Callable[[Row], bool]] = {}

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def compile_where(self, where: str, params: Sequence[str]) -> Callable[[Row], bool]:
        """Postgres plans the clause against the table (type errors, unknown columns, a non-boolean
        result: WhereError), then decides each changed row with ``SELECT <where> FROM (VALUES …)``."""
        key = (where, tuple(params))
        if key not in self._compiled:  # every request validates its where: ask Postgres once
            self._compiled[key] = self._compile(where, params)
        return self._compiled[key]

    def _compile(self, where: str, params: Sequence[str]) -> Callable[[Row], bool]:
        subqueries = check_where_text(where)
        try:
            with self._conn.lock:
                cursor = self._conn.connection().execute(
                    f"SELECT ({where}) FROM {self.qualified} LIMIT 0", list(params)  # type: ignore[arg-type]
                )
                description = cursor.description or []
        except psycopg.Error as exc:
            raise WhereError(_pg_message(exc)) from None
        if len(description) != 1 or description[0].type_code != BOOL_OID:
            raise WhereError("WHERE clause must return a boolean")
        if subqueries:
            from replica.testing.postgres.subquery import check_subqueries  # pglast: only for subquery shapes

            check_subqueries(where)
        names = list(self.columns)
        first = len(params) + 1
        values = ", ".join(f"${first + i}::{self.sqltypes[c]}" for i, c in enumerate(names))
        # The VALUES row is aliased as the table, so "items.id" works as well as "id".
        alias = f"{quote_ident(self.name)}({', '.join(quote_ident(c) for c in names)})"
        sql = f"SELECT ({where}) FROM (VALUES ({values})) AS {alias}"
        fixed = list(params)

        def predicate(row: Row) -> bool:
            found = self._conn.rows(sql, [*fixed, *(row[c] for c in names)])
            return bool(found) and found[0][0] is True  # NULL (unknown) is not in the shape

        return predicate

    def select_list(self, columns: Sequence[str]) -> str:
        """Columns as their type output text: what logical decoding prints, so snapshot rows
        and change rows have one form (the shape log turns bools into true/false for snapshots).
        format('%s') calls the output function (bpchar keeps its padding; ::text would trim it);
        num_nulls tells a NULL from a composite whose fields are all NULL."""
        return ", ".join(
            f"CASE WHEN num_nulls({quote_ident(c)}) = 1 THEN NULL ELSE format('%s', {quote_ident(c)}) END"
            for c in columns
        )


def fingerprint(row: tuple[Any, ...]) -> Fingerprint:
    oid, schema, name, _replident, columns, pk = row
    shape = tuple((c["name"], c["typid"], c["typmod"], c["dims"]) for c in columns)
    return (int(oid), schema, name, shape, tuple(pk))


def read_tables(
    conn: PgConn, *, name: tuple[str, str] | None = None, oids: Sequence[int] | None = None
) -> list[PgTable]:
    """Ordinary tables by (schema, name) or by oid, described from the catalog."""
    if name is not None:
        rows = conn.rows(_TABLES_SQL + "n.nspname = $1 AND c.relname = $2", list(name))
    else:
        rows = conn.rows(_TABLES_SQL + "c.oid = ANY($1::oid[])", [list(oids or [])])
    return [PgTable(row, conn) for row in rows]


def ensure_full_identity(conn: PgConn, table: PgTable) -> None:
    """REPLICA IDENTITY FULL, as Electric sets it: updates and deletes then log the whole old row,
    which a shape needs to tell a row leaving its ``where`` and to fill unchanged TOAST values.
    The ALTER waits for transactions writing the table, so every write it does not see in a
    later snapshot is logged in full."""
    if table.replident == "f":
        return
    with conn.lock:
        db = conn.connection()
        with db.transaction():
            db.execute("SET TRANSACTION READ WRITE")
            db.execute(f"ALTER TABLE {table.qualified} REPLICA IDENTITY FULL")
    table.replident = "f"


# --- snapshots ---


@dataclass(frozen=True)
class Snapshot:
    """Rows (output text, all of the table's columns that were asked for) and the visibility
    of the REPEATABLE READ snapshot that read them (xid8 values, as in snapshot-end)."""

    rows: list[Row]
    xmin: int
    xmax: int
    xip: frozenset[int]

    def sees(self, xid: int) -> bool:
        """Whether the transaction ``xid`` (32-bit, from logical decoding) is in this snapshot."""
        full = widen_xid(xid, self.xmax)
        return full < self.xmin or (full < self.xmax and full not in self.xip)


def widen_xid(xid: int, reference: int) -> int:
    """The 64-bit xid8 nearest ``reference`` whose low 32 bits are ``xid``."""
    full = (reference & ~0xFFFFFFFF) | (xid & 0xFFFFFFFF)
    if full - reference > 2**31:
        full -= 2**32
    elif reference - full > 2**31:
        full += 2**32
    return full


def take_snapshot(
    conn: PgConn, table: PgTable, columns: Sequence[str], where: str | None, params: Sequence[str], *, rows: bool
) -> Snapshot:
    """Read the shape's rows and the snapshot's xmin/xmax/xip in one REPEATABLE READ transaction."""
    select = f"SELECT {table.select_list(columns)} FROM {table.qualified}"
    if where is not None:
        select += f" WHERE ({where})"
    found, xmin, xmax, xip = in_snapshot(
        conn, lambda db: db.execute(select, list(params)).fetchall() if rows else []
    )
    return Snapshot([dict(zip(columns, values, strict=True)) for values in found], xmin, xmax, xip)


def in_snapshot(conn: PgConn, read: Callable[[Any], T]) -> tuple[T, int, int, frozenset[int]]:
    """``read(db)`` in one REPEATABLE READ, READ ONLY transaction, and that snapshot's xmin, xmax and xip."""
    with conn.lock:
        db = conn.connection()
        with db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            current = db.execute("SELECT pg_current_snapshot()::text").fetchone()
            assert current is not None
            found = read(db)
    xmin, xmax, xip = str(current[0]).split(":")
    return found, int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x)


# --- where clauses ---

_LEXEME = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--|/\*|\$\$|[();]|[A-Za-z_][A-Za-z0-9_$]*|.""", re.DOTALL)


def check_where_text(where: str) -> bool:
    """Refuse what a single boolean expression cannot contain, before Postgres sees it: statement
    or parenthesis breaks (``1=1) OR (…``, ``;``), comments and dollar quotes that would hide them.
    True when it has a subquery (``subquery.check_subqueries`` then checks its form)."""
    depth = 0
    subqueries = False
    for match in _LEXEME.finditer(where):
        token = match.group(0)
        if token in ("--", "/*", "$$", ";"):
            raise WhereError(f"At location {match.start()}: {token!r} is not allowed in a where clause")
        subqueries |= token.lower() == "select"
        depth += {"(": 1, ")": -1}.get(token, 0)
        if depth < 0:
            raise WhereError(f"At location {match.start()}: unbalanced parentheses")
    if depth != 0:
        raise WhereError("unbalanced parentheses")
    return subqueries


def _pg_message(exc: psycopg.Error) -> str:
    diag = exc.diag
    return diag.message_primary or str(exc).strip() or type(exc).__name__
