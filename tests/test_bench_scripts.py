"""The benchmark baselines still run: ceiling.py is what every replica/ceiling ratio divides by, and
nothing else imports it, so a change to the fast path's helpers could break it unseen (it did once).
And a ratio means something only if both sides write the same table: the realistic dataset is synced
by replica and by every ceiling variant, and the tables compared value by value, storage class included."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import apsw
import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench"
sys.path.insert(0, str(BENCH))
import data  # noqa: E402

VARIANTS = {"json+rows", "msgspec+columns", "msgspec+thread", "msgspec+json", "jsonb+sql", "jsonb+sql+ahead"}


@pytest.mark.parametrize("dataset", ["narrow", "wide"])
def test_every_ceiling_variant_writes_every_row(dataset: str, tmp_path: Path) -> None:
    data.record(dataset, 3_000, tmp_path)
    done = subprocess.run([sys.executable, str(BENCH / "ceiling.py"), str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]  # each variant asserts its row count
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == {*VARIANTS, "best"}


def typed_rows(db: Path, table: str, names: list[str]) -> list[tuple[Any, ...]]:
    """Every row in key order, each value beside its SQLite storage class (so '1' differs from 1)."""
    columns = ", ".join(f'"{c}", typeof("{c}")' for c in names)
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return list(conn.execute(f'SELECT {columns} FROM "{table}" ORDER BY id'))
    finally:
        conn.close()


def test_the_realistic_dataset_has_every_value_shape_it_promises(tmp_path: Path) -> None:
    index = data.record("realistic", 3_000, tmp_path)
    names = list(index["schema"])
    # Every value shape the dataset promises is in these 3,000 rows (else the comparison proves less).
    values = [m["value"] for _headers, path in data.bodies(tmp_path) for m in json.loads(path.read_text()) if "key" in m]
    for column, shape in [("labels", r'"NULL"'), ("labels", r"\bNULL\b[^\"]"), ("labels", r'\\"'), ("labels", r"\\\\"),
                          ("labels", r'""'), ("labels", r'[{,]"two words"[,}]'), ("labels", "^{}$"), ("counts", "NULL"),
                          ("counts", "^{}$"), ("at", r":\d\d\+00$"), ("at", r"\.\d{3}[+-]"), ("at", r"\.\d{6}[+-]"),
                          ("at", r"\+05:30$"), ("at", "-08$"), ("body", r"\\"), ("body", '"'), ("body", "🎉"),
                          ("amount", r"^-?\d{20,}\.\d+$"), ("blob", r"^\\x$"), ("blob", r"^\\x[0-9a-f]{2,}$")]:
        assert any(re.search(shape, v[column] or "") for v in values), (column, shape)
    assert all(None in {v[c] for v in values} for c in names if c not in ("id", "body", "ref"))


@pytest.mark.parametrize("dataset", ["realistic", "narrow", "wide"])
def test_replica_and_every_ceiling_variant_write_the_same_table(dataset: str, tmp_path: Path) -> None:
    folder, keep = tmp_path / "data", tmp_path / "ceiling"
    keep.mkdir()
    index = data.record(dataset, 3_000, folder)
    names = list(index["schema"])
    server = subprocess.Popen([sys.executable, str(BENCH / "static_server.py"), str(folder)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        synced = subprocess.run([sys.executable, "-m", "replica", "sync", url, "--table", dataset, "--db",
                                 str(tmp_path / "replica.db"), "--once"], capture_output=True, text=True, timeout=120)
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()
    assert synced.returncode == 0, synced.stderr[-3000:]
    done = subprocess.run([sys.executable, str(BENCH / "ceiling.py"), str(folder), "--keep", str(keep)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = typed_rows(tmp_path / "replica.db", dataset, names)
    assert len(expected) == 3_000
    classes = {name: {row[2 * i + 1] for row in expected} for i, name in enumerate(names)}
    if dataset == "realistic":  # each column's storage class as the type map says (design.md §5)
        assert classes == {"id": {"integer"}, "body": {"text"}, "votes": {"integer", "null"},
                           "done": {"integer", "null"}, "amount": {"text", "null"}, "labels": {"text", "null"},
                           "counts": {"text", "null"}, "at": {"text", "null"}, "doc": {"text", "null"},
                           "ref": {"text"}, "blob": {"blob", "null"}}
    for variant in sorted(VARIANTS):
        got = typed_rows(keep / f"{variant}.db", dataset, names)
        assert len(got) == len(expected), variant
        for mine, theirs in zip(expected, got, strict=True):
            assert mine == theirs, (variant, [(n, a, b) for n, a, b in zip(names, mine[::2], theirs[::2], strict=True) if a != b])


def test_later_pairs_run_only_the_ceiling_variants_in_contention() -> None:
    import run

    first = {"jsonb+sql+ahead": 400_000, "jsonb+sql": 210_000, "msgspec+json": 200_000, "json+rows": 60_000,
             "best": "jsonb+sql+ahead"}
    assert run.contenders(first) == ["jsonb+sql+ahead", "jsonb+sql", "msgspec+json"]  # 200k is half of 400k: in


def test_the_stages_script_finds_every_step_it_times() -> None:
    """stages.py wraps functions by name; a rename elsewhere would break it only when someone measures."""
    code = "import stages; stages.instrument()"
    subprocess.run([sys.executable, "-c", code], cwd=BENCH, check=True, timeout=60)


def test_a_peer_that_cannot_sync_a_table_is_reported_with_its_errors_not_a_crash() -> None:
    """pglite-sync fails on the realistic table with every insert method (node prints the error, then a
    stack, then its own version last); the run says so, with each error, where the ratio would be."""
    import run

    outputs = {
        "csv": "node peer.mjs pglite failed (1): file:///x.js:1\nimport{b as ne}from\"./c.js\";var DatabaseError=1\n\n"
               "error: malformed array literal: \"NULL\"\n  severity: 'ERROR',\n  code: '22P02'\n}\n\nNode.js v20.20.2",
        "insert": "failed (1): x.js:1\nimport{b as ne}from\"./c.js\";\n\nTypeError: Cannot read properties of null "
                  "(reading 'length')\n    at qe (file:///x.js:1:2)\n\nNode.js v20.20.2",
    }
    errors = {method: run.node_error(text) for method, text in outputs.items()}
    assert errors == {"csv": 'error: malformed array literal: "NULL"',
                      "insert": "TypeError: Cannot read properties of null (reading 'length')"}
    result = {"dataset": "realistic", "rows": 100_000, "bytes_per_row": 651, "pairs": 5,
              "replica": {"rows_per_s": 50_000, "peak_rss_mb": 112.0}, "ceiling": {"best": "jsonb+sql+ahead"},
              "ceiling_rows_per_s": 55_000, "ratios": {"ceiling": {"median": 0.91, "min": 0.9, "max": 0.92}},
              "cannot": {"pglite": errors}}
    lines = run.targets({"initial": [result]})
    assert any("pglite cannot sync this table" in line and "malformed array literal" in line
               and "Cannot read properties of null" in line for line in lines)
    assert "| cannot |" in run.table({"initial": [result]})
