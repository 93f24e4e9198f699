"""Live mode: Server-Sent Events against long-polls, in one bounded run, variants alternating (issue 20).

    .venv/bin/python scripts/bench/sse.py [--rounds 3] [--changes 300] [--gap-ms 10] [--shapes 100]
                                          [--window 65] [--json PATH]

Loopback only; the server (live.py) keeps Electric's timings (20 s long-polls, 60 s SSE answers,
keep-alive after 21 s). Each round runs both variants, the first one alternating between rounds,
each against a fresh server:
  latency   server release -> row committed, ``--changes`` inserts ``--gap-ms`` apart: p50 / p99 / max
  idle      ``--shapes`` live shapes with no changes for ``--window`` seconds: CPU % of one core of the
            replica process, its RSS, and live requests per minute per shape (the server counts them)
Prints per-round values (their spread is the noise: the machine is shared), the median of the rounds
per variant and the sse / long-poll ratio of those medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import PY, ROOT, Server, percentiles, proc_cpu, proc_rss  # noqa: E402

VARIANTS = ("long-poll", "sse")


def server_requests(server: Server) -> dict[str, int]:
    assert server.proc.stdin is not None and server.proc.stdout is not None
    server.proc.stdin.write("requests\n")
    server.proc.stdin.flush()
    counts: dict[str, int] = json.loads(server.proc.stdout.readline())
    return counts


def latency(variant: str, changes: int, gap_ms: float, tmp: Path) -> dict[str, Any]:
    server = Server([PY, str(HERE / "live.py"), "server", "1000"])
    try:
        url = json.loads(server.first)["url"]
        db = tmp / f"latency-{variant}-{time.monotonic_ns()}.db"
        client = subprocess.Popen([PY, str(HERE / "live.py"), "replica", url, str(db), str(changes), "inline", variant],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert client.stdout is not None and server.proc.stdin is not None and server.proc.stdout is not None
        json.loads(client.stdout.readline())  # ready: live
        time.sleep(0.5)
        before = server_requests(server)["live"]
        server.proc.stdin.write(f"go {changes} {gap_ms}\n")
        server.proc.stdin.flush()
        released = json.loads(server.proc.stdout.readline())["released"]
        seen = json.loads(client.stdout.readline())["seen"]
        client.wait(30)
        result = percentiles(released, seen)
        result["live_requests"] = server_requests(server)["live"] - before
        return result
    finally:
        server.close()


def idle(variant: str, shapes: int, window: float, tmp: Path) -> dict[str, Any]:
    server = Server([PY, str(HERE / "live.py"), "server", str(shapes)])
    try:
        url = json.loads(server.first)["url"]
        db = tmp / f"idle-{variant}-{time.monotonic_ns()}.db"
        client = subprocess.Popen([PY, str(HERE / "live.py"), "idle", url, str(db), str(shapes), variant],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert client.stdout is not None and client.stdin is not None
        json.loads(client.stdout.readline())
        time.sleep(2)
        requests_before = server_requests(server)["live"]
        before, started = proc_cpu(client.pid), time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - started
        cpu = (proc_cpu(client.pid) - before) / elapsed * 100
        requests = server_requests(server)["live"] - requests_before
        rss = proc_rss(client.pid)
        client.stdin.close()
        client.wait(30)
    finally:
        server.close()
    return {"cpu_percent_of_one_core": round(cpu, 2), "rss_mb": round(rss, 1),
            "requests_per_minute_per_shape": round(requests / shapes / elapsed * 60, 2)}


def summary(rounds: list[dict[str, Any]], key: str, field: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        values = [r[variant][key][field] for r in rounds]
        out[variant] = {"median": round(statistics.median(values), 2), "rounds": values}
    base = out["long-poll"]["median"]
    out["ratio_sse_to_long_poll"] = round(out["sse"]["median"] / base, 2) if base else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--shapes", type=int, default=100)
    parser.add_argument("--window", type=float, default=65.0, help="idle seconds per variant and round (>= 60)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for n in range(args.rounds):
            order = VARIANTS if n % 2 == 0 else VARIANTS[::-1]
            result: dict[str, Any] = {variant: {} for variant in VARIANTS}
            for variant in order:
                print(f"round {n + 1}: {variant} latency ...", flush=True)
                result[variant]["latency"] = latency(variant, args.changes, args.gap_ms, tmp)
            for variant in order:
                print(f"round {n + 1}: {variant} idle ({args.shapes} shapes, {args.window:g} s) ...", flush=True)
                result[variant]["idle"] = idle(variant, args.shapes, args.window, tmp)
            rounds.append(result)
    report = {
        "rounds": rounds,
        "p50_ms": summary(rounds, "latency", "p50_ms"),
        "p99_ms": summary(rounds, "latency", "p99_ms"),
        "live_requests_for_the_changes": summary(rounds, "latency", "live_requests"),
        "idle_cpu_percent": summary(rounds, "idle", "cpu_percent_of_one_core"),
        "idle_rss_mb": summary(rounds, "idle", "rss_mb"),
        "idle_requests_per_minute_per_shape": summary(rounds, "idle", "requests_per_minute_per_shape"),
    }
    print(f"\n{args.changes} changes {args.gap_ms:g} ms apart; {args.shapes} idle shapes for {args.window:g} s; "
          f"{args.rounds} rounds, variants alternating")
    print("| measure | long-poll (median; rounds) | sse (median; rounds) | sse / long-poll |")
    print("|---|---|---|---:|")
    for name in ("p50_ms", "p99_ms", "live_requests_for_the_changes", "idle_cpu_percent", "idle_rss_mb",
                 "idle_requests_per_minute_per_shape"):
        row = report[name]
        cells = [f"{row[v]['median']} ({', '.join(str(x) for x in row[v]['rounds'])})" for v in VARIANTS]
        print(f"| {name} | {cells[0]} | {cells[1]} | {row['ratio_sse_to_long_poll']} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
