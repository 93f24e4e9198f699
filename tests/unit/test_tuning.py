"""Process tuning (replica.tuning): applied only where safe, each case in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run(code: str, tmp_path: Path) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and SQLite restart: Linux only")
def test_a_fresh_process_is_tuned_and_sqlite_works_on(tmp_path: Path) -> None:
    out = run("""
        import json, apsw
        from replica.tuning import tune_process
        first = tune_process()
        conn = apsw.Connection("probe.db")
        conn.execute("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        counted = apsw.memory_used()
        again = tune_process()  # must not restart SQLite under the open connection
        print(json.dumps({"first": first, "again": again, "counted": counted,
                          "rows": conn.execute("SELECT count(*) FROM t").fetchone()[0]}))
    """, tmp_path)
    assert out["first"] == {"big_buffers_to_os": True, "sqlite_memstatus_off": True}
    assert out["again"] == {"big_buffers_to_os": True, "sqlite_memstatus_off": True}
    assert out["counted"] == 0  # SQLite no longer counts: the statistics are off
    assert out["rows"] == 1


def test_sqlite_is_left_alone_while_a_connection_is_open(tmp_path: Path) -> None:
    out = run("""
        import json, apsw
        conn = apsw.Connection("mine.db")
        conn.execute("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        from replica.tuning import tune_process
        tuned = tune_process()
        print(json.dumps({"off": tuned["sqlite_memstatus_off"], "counted": apsw.memory_used() > 0,
                          "rows": conn.execute("SELECT count(*) FROM t").fetchone()[0]}))
    """, tmp_path)
    assert out == {"off": False, "counted": True, "rows": 1}


def test_statistics_turned_off_by_someone_else_are_left_alone(tmp_path: Path) -> None:
    # With counting off, "no memory in use" proves nothing: the open connection below must survive.
    out = run("""
        import json, apsw
        apsw.shutdown(); apsw.config(apsw.SQLITE_CONFIG_MEMSTATUS, 0); apsw.initialize()
        conn = apsw.Connection("mine.db")
        conn.execute("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        from replica.tuning import tune_process
        tuned = tune_process()
        print(json.dumps({"off": tuned["sqlite_memstatus_off"],
                          "rows": conn.execute("SELECT count(*) FROM t").fetchone()[0]}))
    """, tmp_path)
    assert out == {"off": False, "rows": 1}


def test_the_cli_tunes_its_process(tmp_path: Path) -> None:
    out = run("""
        import json, apsw
        from replica import cli
        code = cli.main(["status", "--db", "missing.db"])  # refused (exit 2), after tuning
        conn = apsw.Connection(":memory:")
        print(json.dumps({"code": code, "counted": apsw.memory_used()}))
    """, tmp_path)
    assert out == {"code": 2, "counted": 0}
