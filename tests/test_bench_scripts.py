"""The benchmark baselines still run: ceiling.py is what every replica/ceiling ratio divides by, and
nothing else imports it, so a change to the fast path's helpers could break it unseen (it did once)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench"
sys.path.insert(0, str(BENCH))
import data  # noqa: E402


@pytest.mark.parametrize("dataset", ["narrow", "wide"])
def test_every_ceiling_variant_writes_every_row(dataset: str, tmp_path: Path) -> None:
    data.record(dataset, 3_000, tmp_path)
    done = subprocess.run([sys.executable, str(BENCH / "ceiling.py"), str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]  # each variant asserts its row count
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == {"json+rows", "msgspec+columns", "msgspec+thread", "jsonb+sql", "jsonb+sql+ahead", "best"}
