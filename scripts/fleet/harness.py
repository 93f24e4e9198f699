"""The fleet's moving parts, shared by ``scripts/fleet/run.py`` and the CI test: client processes
(``client.py``, several replicas each), their commit reports, and the origin's request log read as
the issue's numbers.

    fleet = Fleet(proxy.url, workdir, tables=["t1", "t2"], clients=5, per_process=1)
    fleet.wait_synced(timeout=30)
    ...
    fleet.close()
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from replica import connect

CLIENT = Path(__file__).resolve().parent / "client.py"

__all__ = ["Fleet", "Report", "percentile", "shape_of", "table_rows"]


@dataclass(frozen=True)
class Report:
    """One published commit in one client database."""

    db: int
    table: str
    lsn: int | None
    rows: int
    refetch: bool
    at: float


class Fleet:
    """``clients`` replicas of ``tables`` through ``url``, ``per_process`` to a process."""

    def __init__(self, url: str, workdir: Path, tables: Sequence[str], *, clients: int, per_process: int = 1,
                 group: bool = True, live: str = "long-poll") -> None:
        self.url = url
        self.tables = list(tables)
        self.clients = clients
        self.dbs = [workdir / f"client{i:03d}.db" for i in range(clients)]
        self.reports: list[Report] = []
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen[str]] = []
        self._stderr: list[Path] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for first in range(0, clients, per_process):
            command = [sys.executable, str(CLIENT), url, "--first", str(first)]
            for db in self.dbs[first:first + per_process]:
                command += ["--db", str(db)]
            for table in self.tables:
                command += ["--table", table]
            if not group:
                command.append("--no-group")
            command += ["--live", live]
            err = workdir / f"client{first:03d}.err"
            self._stderr.append(err)
            with open(err, "w") as stderr:  # the child keeps its own copy of the descriptor
                proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
            self._procs.append(proc)
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                value = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.reports.append(Report(**value))

    def snapshot(self) -> list[Report]:
        with self._lock:
            return list(self.reports)

    def first_seen(self, table: str, lsn: int, since: float = 0.0) -> dict[int, float]:
        """For each database: when ``table`` was first published at ``lsn`` or later (after ``since``)."""
        seen: dict[int, float] = {}
        for report in self.snapshot():
            if (report.table == table and report.lsn is not None and report.lsn >= lsn and report.at >= since
                    and report.db not in seen):
                seen[report.db] = report.at
        return seen

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            for proc, err in zip(self._procs, self._stderr, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"a fleet client exited with {proc.returncode}: {err.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def wait_synced(self, timeout: float) -> None:
        """Until every database has published every table once."""
        want = {(db, table) for db in range(self.clients) for table in self.tables}
        self.wait(lambda: want <= {(r.db, r.table) for r in self.snapshot()}, timeout, "the fleet's first sync")

    def wait_visible(self, table: str, lsn: int, timeout: float, since: float = 0.0) -> dict[int, float]:
        """Until every database shows ``table`` at ``lsn``; when each first did."""
        return dict(self.wait(lambda: (seen if len(seen := self.first_seen(table, lsn, since)) == self.clients
                                       else None), timeout, f"{table} at LSN {lsn} in every database"))

    def rows(self, db: int, table: str) -> list[tuple[Any, ...]]:
        return table_rows(self.dbs[db], table)

    def errors(self) -> str:
        return "".join(err.read_text()[-2000:] for err in self._stderr if err.exists())

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()


def table_rows(db: Path, table: str) -> list[tuple[Any, ...]]:
    """A synced table's rows, in key order (read-only, through apsw as replica's readers do)."""
    conn = connect(db)
    try:
        return [tuple(row) for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY 1')]
    finally:
        conn.close()


def shape_of(target: str) -> str | None:
    """The shape definition a /v1/shape request asks for (its table; the fleet's shapes differ by
    table), or None for other paths."""
    parts = urlsplit(target)
    if not parts.path.rstrip("/").endswith("/v1/shape"):
        return None
    return dict(parse_qsl(parts.query, keep_blank_values=True)).get("table")


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
