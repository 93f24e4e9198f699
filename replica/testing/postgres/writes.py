"""``POST /v1/writes`` for the Postgres dev server: a batch of local writes as one Postgres transaction.

Each change becomes one statement with its values cast from Postgres text to the column's type
(``typemap.pgtext`` turns the outbox's values into that text); the answer is the transaction's
``pg_current_xact_id()``. Postgres' own refusals (a CHECK, UNIQUE, NOT NULL or foreign-key
violation, a value the type refuses) reject the batch with Postgres' message (400); a lost
connection answers 503, so the upload is retried. Development and tests only: off unless enabled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from replica.protocol import wire
from replica.testing.fake.writes import Change, Refused, Unavailable
from replica.testing.postgres.catalog import PgTable
from replica.typemap.pgtext import to_pg_text

__all__ = ["in_postgres"]


def in_postgres(dsn: str, find: Callable[[str, str], Any]) -> Callable[[Sequence[Change]], int]:
    """``apply`` for PostgresElectric: ``find(schema, name)`` is its catalog's table lookup."""

    def apply(changes: Sequence[Change]) -> int:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
                for change in changes:
                    schema, name = wire.parse_table(change["table"])
                    table = find(schema, name)
                    if not isinstance(table, PgTable):
                        raise Refused(f"relation {change['table']!r} does not exist")
                    conn.execute(*_statement(table, change))
                row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        except psycopg.OperationalError as exc:
            raise Unavailable(str(exc)) from None
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError, psycopg.errors.SyntaxErrorOrAccessRuleViolation,
                KeyError, ValueError) as exc:
            raise Refused(str(exc).strip()) from None
        assert row is not None
        return int(row[0])

    return apply


def _statement(table: PgTable, change: Change) -> tuple[sql.Composed, list[str | None]]:
    key: Mapping[str, Any] = change["key"]
    value: Mapping[str, Any] = change.get("value") or {}
    target = sql.Identifier(table.schema, table.name)

    def text(column: str, item: Any) -> str | None:
        spec = table.columns[column]
        return to_pg_text(item, spec["type"], spec.get("dims", 0))

    def cast(column: str) -> sql.Composed:
        return sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(table.sqltypes[column]))

    match = sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier(c), cast(c)) for c in key)
    if change["op"] == "insert":
        row = {**value, **key}
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            target, sql.SQL(", ").join(sql.Identifier(c) for c in row), sql.SQL(", ").join(cast(c) for c in row))
        return statement, [text(c, v) for c, v in row.items()]
    if change["op"] == "delete":
        return sql.SQL("DELETE FROM {} WHERE {}").format(target, match), [text(c, v) for c, v in key.items()]
    sets = {c: v for c, v in value.items() if c not in key}
    if not sets:  # nothing to change: a statement that touches nothing
        return sql.SQL("SELECT 1 FROM {} WHERE false").format(target), []
    statement = sql.SQL("UPDATE {} SET {} WHERE {}").format(
        target, sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), cast(c)) for c in sets), match)
    return statement, [*(text(c, v) for c, v in sets.items()), *(text(c, v) for c, v in key.items())]
