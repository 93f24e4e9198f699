"""Peak memory of `replica sync --once` for a 100,000-row and a 1,000,000-row snapshot (R10).

Bounded and loopback only: serves the sample table with `python -m replica.testing serve --rows N`,
runs the real CLI in a child process that reports its own peak RSS, and prints one JSON line per
size plus a summary line with the same-run ratio (target: 1M-row peak <= 1.3 x 100k-row peak).

    .venv/bin/python scripts/bench/memory.py [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import apsw

# Runs the CLI in-process and reports the peak resident set of that process, in KiB (Linux).
CHILD = """
import resource, sys
from replica.cli.commands import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def measure(rows: int, workdir: Path) -> dict[str, object]:
    server = subprocess.Popen(
        [sys.executable, "-m", "replica.testing", "serve", "--port", "0", "--rows", str(rows)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        db = workdir / f"bench-{rows}.db"
        started = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", CHILD, "sync", url, "--table", "items", "--db", str(db), "--once"],
            capture_output=True, text=True, timeout=1800,
        )
        elapsed = time.perf_counter() - started
        if child.returncode != 0:
            raise SystemExit(f"replica sync failed: {child.stderr}")
        peak_kib = int(child.stderr.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(30)
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    synced = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    conn.close()
    assert synced == rows, f"synced {synced} rows, expected {rows}"
    return {"rows": rows, "seconds": round(elapsed, 2), "rows_per_s": round(rows / elapsed),
            "peak_rss_mb": round(peak_kib / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    facts = {"python": platform.python_version(), "sqlite": apsw.sqlite_lib_version(), "machine": platform.machine()}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.sizes:
            result = measure(rows, Path(tmp))
            results.append(result)
            print(json.dumps({"bench": "memory", **result, **facts}), flush=True)
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ratio = large["peak_rss_mb"] / small["peak_rss_mb"]  # type: ignore[operator]
        print(json.dumps({"bench": "memory", "summary": f"peak RSS {large['rows']} rows / {small['rows']} rows",
                          "ratio": round(ratio, 3), "target": 1.3, "ok": ratio <= 1.3}))


if __name__ == "__main__":
    main()
