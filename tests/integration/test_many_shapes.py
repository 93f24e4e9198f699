"""One `replica run` with 200 shapes against the loopback fake: every shape reaches live, /readyz is
200 with one entry per shape, `status --json` agrees with the database, a change to every shape
arrives, and the daemon's progress lines stay summaries rather than a line per shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonproc import Daemon, free_port

from replica import connect
from replica.cli.daemon import OWN_FILES
from replica.testing import FakeElectric, serve_in_thread

pytestmark = pytest.mark.integration

SHAPES = 200
COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "v": {"type": "int8"}}


@pytest.fixture
def fake() -> FakeElectric:
    fake = FakeElectric(long_poll_timeout=5.0)
    fake.create_table("t", COLUMNS, [{"id": str(i), "v": "0"} for i in range(1, SHAPES + 1)])
    return fake


@pytest.fixture
def daemon(fake: FakeElectric, tmp_path: Path) -> Iterator[Daemon]:
    with serve_in_thread(fake) as server:
        lines = [f'url = "{server.url}"', 'database = "many.db"', f'listen = "127.0.0.1:{free_port()}"', ""]
        for i in range(1, SHAPES + 1):
            lines += ["[[shapes]]", 'table = "t"', f'name = "s{i}"', 'where = "id = $1"', f'params = {{ 1 = "{i}" }}',
                      ""]
        (tmp_path / "replica.toml").write_text("\n".join(lines))
        daemon = Daemon(tmp_path / "replica.toml")
        try:
            yield daemon
        finally:
            daemon.close()


def test_200_shapes_in_one_daemon_reach_live_and_report_correctly(
    fake: FakeElectric, daemon: Daemon, tmp_path: Path
) -> None:
    daemon.wait_for(lambda: daemon.readyz()[0] == 200, timeout=60)
    ready = daemon.readyz()[1]
    assert ready["ready"] is True and ready["not_ready"] == []
    assert sorted(s["name"] for s in ready["shapes"]) == sorted(f"s{i}" for i in range(1, SHAPES + 1))
    assert all(s["ready"] and s["rows"] == 1 for s in ready["shapes"])
    # one socket per idle shape (its long-poll), and a bounded number of the daemon's own
    fds = len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))
    assert SHAPES < fds <= SHAPES + OWN_FILES, fds

    db = tmp_path / "many.db"
    done = subprocess.run([sys.executable, "-m", "replica", "status", "-c", str(tmp_path / "replica.toml"), "--json"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    by_name = {row["name"]: row for row in json.loads(done.stdout)}
    conn = connect(db)
    try:
        stored = {n: (h, o, r) for n, h, o, r in
                  conn.execute('SELECT "name", "handle", "offset", "rows" FROM "_replica_shapes"').fetchall()}
        values = {n: conn.execute(f'SELECT "id", "v" FROM "{n}"').fetchall() for n in by_name}
    finally:
        conn.close()
    assert len(by_name) == SHAPES
    assert stored == {n: (row["handle"], row["offset"], row["rows"]) for n, row in by_name.items()}
    assert all(row["state"] == "live" and row["error"] is None for row in by_name.values())
    assert values == {f"s{i}": [(i, 0)] for i in range(1, SHAPES + 1)}

    # a burst touching every shape: each shape's long-poll answers, and every table shows its change
    with fake.transaction() as tx:
        for i in range(1, SHAPES + 1):
            tx.update("t", {"id": str(i), "v": "1"})

    def all_changed() -> bool:
        conn = connect(db)
        try:
            return all(conn.execute(f'SELECT "v" FROM "s{i}"').fetchone() == (1,) for i in range(1, SHAPES + 1))
        finally:
            conn.close()

    daemon.wait_for(all_changed, timeout=60)
    progress = [line for line in daemon.lines if "initial sync" in line]
    assert progress and all(f"{SHAPES} shapes:" in line and "s150 done" not in line for line in progress), progress
    code, _ = daemon.stop()
    assert code == 0, daemon.log
