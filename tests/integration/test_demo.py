"""`replica demo` (what scripts/demo runs) works end to end and says what it did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_syncs_and_shows_live_changes(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    done = subprocess.run([sys.executable, "-m", "replica", "demo", "--db", str(db)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "now holds 1000 rows" in out
    for change in ("insert item 1001", "rename item 1", "delete item 2"):
        assert f"{change} on the server → visible in" in out
    assert "exit 0" in out and db.exists()


def test_demo_writes_shows_a_local_write_uploaded_and_one_queued_while_the_endpoint_is_down(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    done = subprocess.run([sys.executable, "-m", "replica", "demo", "--writes", "--db", str(db)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "read back at once: [(1, 'written locally')]; waiting in _replica_outbox: 1" in out
    assert "confirmed by the synced row after" in out and "the outbox is empty" in out
    assert "read back at once: [(1002, 'written offline')]" in out
    assert "1 local write waits to upload, last failure: the write endpoint answered 503" in out
    assert "the queued write reached the server and came back" in out and "exit 0" in out
