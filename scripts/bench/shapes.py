"""Many shapes in one daemon: `replica run` with N small shapes against the fake (issue 18, part 2).

    .venv/bin/python scripts/bench/shapes.py [--shapes 100 1000] [--idle 30] [--long-poll 20]

Loopback only, bounded. A FakeElectric (``--long-poll`` s long-polls, 20 like Electric) serves table
``t`` with one row per shape; shape ``s<i>`` is ``where id = $1`` with ``$1 = i``. For each N, in turn:
the time from starting `replica run` to ``/readyz`` 200 (and the fake's CPU meanwhile: it shares
the cores), then the daemon's idle CPU (percent of one
core) and RSS over ``--idle`` seconds, its open file descriptors, the server's requests per second
meanwhile (N / long-poll is the floor), then a burst (one transaction updating every row) and the
time until every table shows it. Printed as a table and JSON; the smallest N is the baseline the
ratios are taken against (same run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402

PY = sys.executable
COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "v": {"type": "int8"}}


def server(shapes: int, long_poll: float) -> None:
    from replica.testing import FakeElectric, serve_in_thread

    fake = FakeElectric(long_poll_timeout=long_poll)
    fake.create_table("t", COLUMNS, [{"id": str(i), "v": "0"} for i in range(1, shapes + 1)])
    with serve_in_thread(fake) as srv:
        print(json.dumps({"url": srv.url}), flush=True)
        for line in sys.stdin:
            if line.startswith("requests"):
                print(json.dumps({"requests": len(fake.requests)}), flush=True)
            elif line.startswith("burst"):
                with fake.transaction() as tx:
                    for i in range(1, shapes + 1):
                        tx.update("t", {"id": str(i), "v": "1"})
                print(json.dumps({"burst": True}), flush=True)
            else:
                return


def config(path: Path, url: str, shapes: int, port: int) -> Path:
    lines = [f'url = "{url}"', f'database = "{path.parent / "many.db"}"', f'listen = "127.0.0.1:{port}"', ""]
    for i in range(1, shapes + 1):
        lines += ["[[shapes]]", 'table = "t"', f'name = "s{i}"', 'where = "id = $1"', f'params = {{ 1 = "{i}" }}',
                  "group = false", ""]
    path.write_text("\n".join(lines))
    return path


def ask(srv: bench.Server, line: str) -> dict[str, Any]:
    assert srv.proc.stdin is not None and srv.proc.stdout is not None
    srv.proc.stdin.write(line + "\n")
    srv.proc.stdin.flush()
    answer: dict[str, Any] = json.loads(srv.proc.stdout.readline())
    return answer


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return int(reply.status)
    except (urllib.error.URLError, ConnectionError):
        return 0


def all_changed(db: Path, shapes: int) -> bool:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return all(conn.execute(f'SELECT "v" FROM "s{i}"').fetchone() == (1,) for i in range(1, shapes + 1))
    finally:
        conn.close()


def measure(shapes: int, idle: float, long_poll: float, tmp: Path) -> dict[str, Any]:
    srv = bench.Server([PY, __file__, "server", str(shapes), str(long_poll)])
    folder = tmp / str(shapes)
    folder.mkdir()
    port = bench_port()
    try:
        url = json.loads(srv.first)["url"]
        cfg = config(folder / "replica.toml", url, shapes, port)
        started, server_cpu0 = time.monotonic(), bench.proc_cpu(srv.proc.pid)
        with open(folder / "daemon.log", "w") as log:  # the daemon keeps its own descriptor
            daemon = subprocess.Popen([PY, "-m", "replica", "run", "-c", str(cfg)], cwd=ROOT, stderr=log)
        try:
            while readyz(port) != 200:
                if daemon.poll() is not None or time.monotonic() - started > 300:
                    raise SystemExit(f"not ready: see {folder / 'daemon.log'}")
                time.sleep(0.05)
            ready_s = time.monotonic() - started
            server_cpu_ready = bench.proc_cpu(srv.proc.pid) - server_cpu0
            time.sleep(2)  # every shape holds its long-poll
            before = ask(srv, "requests")["requests"]
            cpu0, t0 = bench.proc_cpu(daemon.pid), time.monotonic()
            time.sleep(idle)
            window = time.monotonic() - t0
            cpu = (bench.proc_cpu(daemon.pid) - cpu0) / window * 100
            requests = (ask(srv, "requests")["requests"] - before) / window
            rss, fds = bench.proc_rss(daemon.pid), len(os.listdir(f"/proc/{daemon.pid}/fd"))
            burst0 = time.monotonic()
            ask(srv, "burst")
            while not all_changed(folder / "many.db", shapes):
                time.sleep(0.02)
            burst_s = time.monotonic() - burst0
            peak = bench.proc_rss(daemon.pid, "VmHWM")
        finally:
            daemon.terminate()
            daemon.wait(30)
    finally:
        srv.close()
    log_lines = (folder / "daemon.log").read_text().count("\n")
    per_poll = cpu * 10 / max(requests, 1e-9)  # ms of CPU per round trip: % of a core * 10 / (requests/s)
    return {"shapes": shapes, "ready_s": round(ready_s, 1), "server_cpu_s_until_ready": round(server_cpu_ready, 1),
            "idle_cpu_percent_of_one_core": round(cpu, 2),
            "cpu_ms_per_long_poll": round(per_poll, 2),
            # long-polls started together return together: a window sees a multiple of N, so the
            # steady state (every shape returning once per long-poll) is worked out from the cost of one
            "steady_idle_cpu_percent": round(per_poll * shapes / long_poll / 10, 2),
            "requests_per_s": round(requests, 1),
            "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1), "open_fds": fds, "burst_s": round(burst_s, 2),
            "daemon_log_lines": log_lines}


def bench_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds of idle measurement (at least the long-poll: else it may see none return)")
    parser.add_argument("--long-poll", type=float, default=20.0, help="the fake's long-poll timeout, s")
    args = parser.parse_args()
    if args.idle < args.long_poll:
        parser.error(f"--idle {args.idle:g} is shorter than the long-poll ({args.long_poll:g} s): it could see no round trip")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for shapes in sorted(args.shapes):  # the smallest first: the baseline
            results.append(measure(shapes, args.idle, args.long_poll, Path(scratch)))
            print("  ", results[-1], flush=True)
    base = results[0]
    print("| shapes | ready s (fake's CPU s) | idle CPU % of a core (steady state) | CPU ms per long-poll | RSS MB | open fds | burst s | log lines |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['shapes']:,} | {r['ready_s']} ({r['server_cpu_s_until_ready']}) | {r['idle_cpu_percent_of_one_core']} ({r['steady_idle_cpu_percent']}) | {r['cpu_ms_per_long_poll']} | "
              f"{r['rss_mb']} | {r['open_fds']} | {r['burst_s']} | {r['daemon_log_lines']} |")
    for r in results[1:]:
        scale = r["shapes"] / base["shapes"]
        print(f"{r['shapes']:,} vs {base['shapes']:,} shapes ({scale:g}x): ready {r['ready_s'] / max(base['ready_s'], 0.1):.1f}x, "
              f"idle CPU {r['idle_cpu_percent_of_one_core'] / max(base['idle_cpu_percent_of_one_core'], 0.01):.1f}x, "
              f"burst {r['burst_s'] / max(base['burst_s'], 0.01):.1f}x")
    print(json.dumps({"shapes": results, "facts": bench.facts()}))


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "server":
        server(int(sys.argv[2]), float(sys.argv[3]))
    else:
        main()
