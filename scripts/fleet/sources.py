"""The fleet's origins: what run.py writes to and checks the fleet against.

``FakeSource`` (quick mode): FakeElectric in this process. ``PostgresSource`` (full mode): the
project's Postgres dev server (``PostgresElectric``) over a throwaway cluster, with the writer's
changes made in Postgres with SQL and reaching the fleet through logical decoding, as with Electric.
Both serve ``/v1/shape`` through the same machinery, so ``service.requests`` is the origin's load.
"""

from __future__ import annotations

import time
from typing import Any

from replica.testing import FakeElectric

TABLES = ("t1", "t2")
COLUMNS: dict[str, dict[str, Any]] = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "v": {"type": "int8"}}


class FakeSource:
    mode = "quick (fake origin)"

    def __init__(self, rows: int) -> None:
        self.service: Any = FakeElectric(long_poll_timeout=20.0)
        for table in TABLES:
            self.service.create_table(table, COLUMNS, [{"id": str(i), "v": "0"} for i in range(1, rows + 1)])

    def update(self, table: str, key: int, value: int) -> int:
        """Set row ``key``'s v in its own transaction; the commit's LSN."""
        return int(self.service.update(table, {"id": str(key), "v": str(value)}))

    def rows(self, table: str) -> list[tuple[int, int]]:
        return sorted((int(r["id"]), int(r["v"] or 0)) for r in self.service.rows(table).values())

    def rotate(self) -> None:
        """New handles for every shape, as an origin restart gives (the fake keeps its data)."""
        for table in TABLES:
            self.service.rotate(table)

    def close(self) -> None:
        pass


class PostgresSource:
    """A fresh database in ``cluster`` with TABLES, served by the Postgres dev server (20 s long-polls)."""

    mode = "full (Postgres dev server origin)"
    _databases = 0

    def __init__(self, cluster: Any, rows: int) -> None:
        import psycopg

        from replica.testing.postgres.server import PostgresElectric

        PostgresSource._databases += 1
        dsn = cluster.create_database(f"fleet_{PostgresSource._databases}")
        self._sql = psycopg.connect(dsn, autocommit=True)
        for table in TABLES:
            self._sql.execute(f"CREATE TABLE {table} (id int8 PRIMARY KEY, v int8)")
            self._sql.execute(f"INSERT INTO {table} SELECT i, 0 FROM generate_series(1, %s) i",
                              (rows,))
        self.service: Any = PostgresElectric(dsn, long_poll_timeout=20.0)

    def update(self, table: str, key: int, value: int) -> int:
        """UPDATE one row (its own transaction); once the dev server has decoded it, its LSN."""
        before = self.service.lsn
        self._sql.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (value, key))
        deadline = time.monotonic() + 30
        while self.service.lsn <= before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dev server did not decode the update of {table} within 30 s")
            time.sleep(0.001)
        return int(self.service.lsn)

    def rows(self, table: str) -> list[tuple[int, int]]:
        found = self._sql.execute(f"SELECT id, v FROM {table}").fetchall()
        return sorted((int(i), int(v or 0)) for i, v in found)

    def rotate(self) -> None:
        raise NotImplementedError("--faults needs the fake origin (quick mode)")

    def close(self) -> None:
        self.service.close()
        self._sql.close()
