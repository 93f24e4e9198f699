"""The sample table of ``replica demo`` in a throwaway Postgres, served by the Postgres dev server.

``replica demo --postgres`` uses this instead of the fake: same table and rows (``items``, 1,000
rows, the columns of ``sample.py``), same three live changes, made with SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import psycopg

from replica.testing.postgres.cluster import PgCluster
from replica.testing.postgres.server import PostgresElectric
from replica.testing.server import serve_in_thread

__all__ = ["SEED_SQL", "postgres_source"]

SEED_SQL = """
CREATE TABLE items (
    id int8 PRIMARY KEY, title text NOT NULL, done bool NOT NULL, price numeric(10, 2), tags text[],
    created_at timestamptz, payload jsonb, rating float8, owner uuid
);
INSERT INTO items
SELECT n, 'item ' || n, n % 3 = 0, round((n * 7 % 10000) / 100.0, 2),
       CASE WHEN n % 4 = 0 THEN NULL ELSE ARRAY['tag' || n % 5, 'has "quotes", commas'] END,
       timestamptz '2026-01-01 00:00:00+00' + n * interval '37 minutes',
       jsonb_build_object('n', n, 'even', n % 2 = 0), n / 7.0, md5(n::text)::uuid
FROM generate_series(1, 1000) AS n
"""

Changes = tuple[Callable[[], object], Callable[[], object], Callable[[], object]]


@contextmanager
def postgres_source(
    say: Callable[[str], None], new_row: Mapping[str, str | None]
) -> Iterator[tuple[str, str, Changes]]:
    """Start a cluster, seed ``items``, serve it on 127.0.0.1: yields (shape URL, where the
    changes happen, the three changes: insert ``new_row``, rename item 1, delete item 2).
    Raises PgClusterError when there are no Postgres binaries."""
    with PgCluster.start() as cluster:
        dsn = cluster.create_database("demo")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SEED_SQL)
            with PostgresElectric(dsn, long_poll_timeout=5.0) as source, serve_in_thread(source) as server:
                say(f"a throwaway Postgres on 127.0.0.1:{cluster.port} holds table 'items' (1000 rows); "
                    f"the Postgres dev server serves it at {server.url}")
                columns = list(new_row)
                insert = (f"INSERT INTO items ({', '.join(columns)}) "
                          f"VALUES ({', '.join(['%s'] * len(columns))})")
                yield server.url, "in Postgres", (
                    lambda: conn.execute(insert, list(new_row.values())),  # type: ignore[arg-type]
                    lambda: conn.execute("UPDATE items SET title = 'renamed live' WHERE id = 1"),
                    lambda: conn.execute("DELETE FROM items WHERE id = 2"),
                )
