"""The kill -9 torture, short variant (scripts/torture/kill9.py runs the full one: 200 kills).

``replica sync`` runs as a subprocess against a loopback FakeElectric that keeps changing
(inserts, partial updates, deletes, primary-key changes, rotations) and is killed with SIGKILL
during the initial snapshot, mid-staging, around a commit and live; after every kill the script
checks integrity, the resume point (never backwards except through a 409) and that rows and
checkpoint agree, and at the end that the table equals the source.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def torture(script: str, *args: str, timeout: float) -> tuple[dict[str, int], str]:
    """Run scripts/torture/<script> with ``args``: its summary line's counts, and the line."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "torture" / script), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}, line


@pytest.mark.integration
@pytest.mark.guarantee("R1")
@pytest.mark.guarantee("R3")
@pytest.mark.guarantee("R9")
def test_kill9_torture_short(tmp_path: Path) -> None:
    counts, line = torture("kill9.py", "--kills", "20", "--seed", "3", "--rows", "2000", "--time-limit", "50",
                           "--workdir", str(tmp_path), timeout=90)
    assert counts["kills"] == 20 and counts["restarts"] == 21, line
    assert counts["integrity_checks"] >= 21 and "converged=yes" in line, line
    assert counts["final_rows"] > 0 and counts["mutations"] > 0, line
    hit = [phase for phase in ("initial", "staging", "commit", "live") if counts[phase] > 0]
    assert len(hit) >= 3, f"the kills hit too few phases: {line}"


@pytest.mark.integration
@pytest.mark.guarantee("R1")
@pytest.mark.guarantee("R3")
def test_kill9_torture_of_a_subquery_shape_short(tmp_path: Path) -> None:
    """scripts/torture/kill9.py --subquery: memberships come and go while a subquery shape syncs; kills
    while moved-in rows are applied, between a staged move-out and its up-to-date, and after 409s;
    the last syncer must reach the fake's oracle after a move-out it can only see staged."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "torture" / "kill9.py"), "--subquery", "--kills", "16", "--seed", "6",
         "--rows", "1000", "--time-limit", "60", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    counts = {k.replace("-", "_"): int(v) for k, v in re.findall(r"([\w-]+)=(\d+)", line)}
    assert counts["kills"] == 16 and counts["restarts"] == 17 and "converged=yes" in line, line
    assert counts["409s"] > 0 and counts["final_rows"] > 0, line
    # Which moments the kills hit depends on timing; over 16 kills the move moments are hit (seeds 3-6: 4-11).
    assert counts["move_in"] + counts["move_out_staged"] >= 1, f"no kill hit a move: {line}"


@pytest.mark.integration
@pytest.mark.guarantee("R11")
@pytest.mark.guarantee("R3")
def test_kill9_torture_of_a_consistency_group_short(tmp_path: Path) -> None:
    """scripts/torture/groups.py: `replica run` with two shapes in one group, killed with SIGKILL at random
    moments while amounts move between the tables: never half a transfer visible, the group's LSN never
    goes back, and the last run converges."""
    counts, line = torture("groups.py", "--kills", "12", "--seed", "5", "--time-limit", "60", "--workdir", str(tmp_path),
                           timeout=120)
    assert counts["kills"] == 12 and counts["both_visible"] >= 6 and "converged=yes" in line, line


@pytest.mark.integration
@pytest.mark.guarantee("R1")
def test_kill9_torture_of_local_writes_short(tmp_path: Path) -> None:
    """scripts/torture/writes.py: `replica run` with a writable shape, killed with SIGKILL at random moments
    while an app writes through the view and the write endpoint loses answers: no committed local write
    lost, none sent under two batch_ids or applied twice, the view shows the app's last writes, and the
    last run uploads everything and converges."""
    counts, line = torture("writes.py", "--kills", "12", "--seed", "4", "--time-limit", "90", "--workdir", str(tmp_path),
                           timeout=150)
    assert counts["kills"] == 12 and counts["checks"] == 12 and "converged=yes" in line, line
    assert counts["writes"] > 50 and counts["batches"] > 1, line
