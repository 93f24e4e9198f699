"""An app's view of an embedded Replica: the sync process (process="child") against inline, same run.

    .venv/bin/python scripts/bench/embedded.py [--rows 1000000] [--pairs 3] [--changes 300]

Loopback only, bounded. Alternating child/inline, ``--pairs`` times each:
  stall     a 1 ms timer in the app's main thread during an initial sync of ``--rows`` narrow rows
            (scripts/bench/data.py, served by static_server.py): the longest and the p99 overshoot,
            sync seconds, and peak RSS of the app process and of its sync process
  live      server release -> the app's on_commit (scripts/bench/live.py), ``--changes`` changes 10 ms apart:
            p50/p99 ms
Prints a table and one JSON object (also written to bench-results/embedded-<time>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402

PY = sys.executable


def stall(url: str, db: str, process: str) -> None:
    """Run in its own process: sync while the main thread ticks a 1 ms timer; print what it saw."""
    from replica import Replica, Shape

    replica = Replica(db, url, Shape("narrow"), process=process)
    started = time.perf_counter()
    replica.start()
    overshoots: list[float] = []
    while replica.status()[0].state != "live":
        tick = time.perf_counter()
        time.sleep(0.001)
        overshoots.append((time.perf_counter() - tick - 0.001) * 1000)
    seconds = time.perf_counter() - started
    replica.stop()
    ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the sync process, once reaped
    quantiles = statistics.quantiles(overshoots, n=100, method="inclusive")
    print(json.dumps({"process": process, "sync_s": round(seconds, 2), "ticks": len(overshoots),
                      "max_stall_ms": round(max(overshoots), 2), "p99_stall_ms": round(quantiles[98], 2),
                      "app_peak_rss_mb": round(ours, 1),
                      "sync_process_peak_rss_mb": round(child, 1) if process == "child" else 0.0}))


def stalls(rows: int, pairs: int, tmp: Path) -> list[dict[str, Any]]:
    folder = bench.dataset("narrow", rows)
    server = bench.Server([PY, str(HERE / "static_server.py"), str(folder)])
    results = []
    try:
        for attempt in range(pairs):
            for process in ("child", "inline"):
                db = tmp / f"stall-{process}-{attempt}.db"
                out = subprocess.run([PY, __file__, "stall", server.first, str(db), process], capture_output=True,
                                     text=True, timeout=1800, cwd=ROOT, check=True).stdout
                results.append(json.loads(out.splitlines()[-1]))
                print("  ", results[-1], flush=True)
    finally:
        server.close()
    return results


def latencies(changes: int, pairs: int, tmp: Path) -> list[dict[str, Any]]:
    results = []
    for attempt in range(pairs):
        for process in ("child", "inline"):
            server = bench.Server([PY, str(HERE / "live.py"), "server", "1000"])
            try:
                url = json.loads(server.first)["url"]
                db = tmp / f"live-{process}-{attempt}.db"
                client = subprocess.Popen([PY, str(HERE / "live.py"), "replica", url, str(db), str(changes), process],
                                          stdout=subprocess.PIPE, text=True, cwd=ROOT)
                assert client.stdout is not None and server.proc.stdin is not None and server.proc.stdout is not None
                json.loads(client.stdout.readline())  # live
                time.sleep(0.5)
                rss = bench.proc_rss(client.pid) + sum(bench.proc_rss(pid) for pid in _children(client.pid))
                server.proc.stdin.write(f"go {changes} 10\n")
                server.proc.stdin.flush()
                released = json.loads(server.proc.stdout.readline())["released"]
                seen = json.loads(client.stdout.readline())["seen"]
                client.wait(30)
                results.append({"process": process, **bench.percentiles(released, seen), "rss_mb": round(rss, 1)})
                print("  ", results[-1], flush=True)
            finally:
                server.close()
    return results


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _median(runs: list[dict[str, Any]], process: str, key: str) -> float:
    return round(statistics.median(r[key] for r in runs if r["process"] == process), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--changes", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        print("live latency, child and inline alternating:", flush=True)
        live = latencies(args.changes, args.pairs, tmp)
        print(f"main-thread stalls during a {args.rows:,}-row initial sync, child and inline alternating:", flush=True)
        synced = stalls(args.rows, args.pairs, tmp)
    report = {"facts": bench.facts(), "rows": args.rows, "live": live, "stall": synced}
    lines = ["| measure (median of the pairs) | child | inline |", "|---|---:|---:|"]
    for label, runs, key in [
        ("live p50 ms", live, "p50_ms"), ("live p99 ms", live, "p99_ms"), ("RSS while live, MB (app + sync)", live,
                                                                           "rss_mb"),
        (f"longest main-thread stall during {args.rows:,}-row sync, ms", synced, "max_stall_ms"),
        ("p99 main-thread stall, ms", synced, "p99_stall_ms"), ("initial sync s", synced, "sync_s"),
        ("peak RSS of the app process, MB", synced, "app_peak_rss_mb"),
        ("peak RSS of the sync process, MB", synced, "sync_process_peak_rss_mb"),
    ]:
        lines.append(f"| {label} | {_median(runs, 'child', key)} | {_median(runs, 'inline', key)} |")
    print("\n".join(lines))
    out = bench.RESULTS / f"embedded-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"written": str(out.relative_to(ROOT))}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["stall"]:
        stall(*sys.argv[2:5])
    else:
        main()
