"""The benchmark: replica against the machine's ceiling and the JS peers, in one bounded run.

    .venv/bin/python scripts/bench/run.py [--full] [--repeat N] [--no-peers] [--no-chart]   (or: scripts/bench/run)

Loopback only. Datasets (data.py): ``narrow`` (~150 B rows), ``wide`` (~1 KB rows) and ``realistic``
(~500 B rows of values as real apps hold them: escapes, NULLs, arrays, offsets), pre-encoded once into
bench-results/data/ and served by static_server.py (no work per request). Measures (live and idle
first, on a quiet machine):
  initial   at 100k rows (and 1M with --full), --repeat pairs (default 5) run alternately: replica
            then the ceiling, the ceiling then replica, … so load that drifts hits both alike.
            `replica sync --once`: sync start to commit (its --verbose timer, as the peers time
            themselves; the process wall time is recorded too) and peak RSS; the ceiling (ceiling.py,
            its best in-process variant in that run); the peers (@electric-sql/client Shape,
            pglite-sync into PGlite) from the same server, once per pair.
            The statistic (issues 5 and 17): each ratio is the median over the pairs of the same
            pair's ratio, printed with its min–max; rows/s are the medians of the runs.
  live      server release -> row committed (replica) / subscriber callback (TS client), 500 changes
  idle      100 live shapes long-polling with no changes: CPU % of one core and RSS over 30 s
Prints a table with the targets' same-run ratios and writes bench-results/bench-<time>.json;
renders docs/performance.png when matplotlib (the `bench` extra) is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import apsw

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import data  # noqa: E402

PY = sys.executable
RESULTS = ROOT / "bench-results"
DDL = {
    "narrow": "CREATE TABLE narrow (id int8 PRIMARY KEY, name text, active bool, amount numeric, "
    "updated_at timestamptz, score float8)",
    "wide": "CREATE TABLE wide (id int8 PRIMARY KEY, title text, description text, notes text, status text, "
    "tags text[], payload jsonb, owner uuid, price numeric, quantity int4, rating float8, flag bool, "
    "created_at timestamptz, updated_at timestamptz, due date, city text)",
    "realistic": "CREATE TABLE realistic (id int8 PRIMARY KEY, body text, votes int4, done bool, amount numeric, "
    "labels text[], counts int4[], at timestamptz, doc jsonb, ref uuid, blob bytea)",
}
PAIRS = 5  # the fewest pairs the statistic is taken over
TARGETS = {"narrow": 0.7, "wide": 0.8, "realistic": 0.7}  # replica/ceiling, issue 17
LIVE_P50_MS, LIVE_P99_MS = 3.0, 10.0  # server release -> committed, issue 17


def run_rss(
    cmd: list[str], timeout: float = 1800, env: dict[str, str] | None = None
) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS MB of the child, its stdout, its stderr)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(cmd)
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {err.read()[-2000:]}")
        return elapsed, usage.ru_maxrss / 1024, out.read(), err.read()


class Server:
    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        self.first = self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def dataset(name: str, rows: int) -> Path:
    folder = RESULTS / "data" / f"{name}-{rows}-v1"
    if not (folder / "index.json").exists():
        print(f"  recording {name} x {rows} ...", flush=True)
        data.record(name, rows, folder)
    return folder


def initial(name: str, rows: int, peers: bool, tmp: Path, repeat: int) -> dict[str, Any]:
    """``repeat`` alternating pairs of replica and the ceiling (and the peers once per pair); see ``summarise``."""
    folder = dataset(name, rows)
    index = json.loads((folder / "index.json").read_text())
    server = Server([PY, str(HERE / "static_server.py"), str(folder)])
    result: dict[str, Any] = {"dataset": name, "rows": rows, "body_bytes": index["bytes"],
                              "bytes_per_row": round(index["bytes"] / rows), "pairs": repeat}
    runs: dict[str, list[dict[str, Any]]] = {"replica": [], "ceiling": []}
    variants: list[str] = []  # the first pair runs every ceiling variant; later ones only those in contention
    cannot: dict[str, dict[str, str]] = {}  # peer -> {insert method: the error} when every method failed
    try:
        for attempt in range(repeat):
            order = ["replica", "ceiling"] if attempt % 2 == 0 else ["ceiling", "replica"]
            for who in order:
                if who == "replica":
                    runs["replica"].append(replica_sync(server, name, rows, tmp / f"{name}-{rows}-{attempt}.db"))
                else:
                    runs["ceiling"].append(ceiling_run(folder, rows, variants))
                done = runs[who][-1]
                print(f"  pair {attempt + 1} {who}: {done['seconds']} s ({done.get('best', 'sync')}), "
                      f"wall {done['wall_seconds']} s, load {os.getloadavg()[0]:.1f}", flush=True)
            if not variants:
                variants = contenders(runs["ceiling"][0]["variants"])
            for peer in ("client", "pglite") if peers else ():
                if peer in cannot:
                    continue  # it failed on this table once: every pair would fail the same way
                done = node_peer(server, peer, name, rows)
                if "cannot" in done:
                    cannot[peer] = done["cannot"]
                    print(f"  {peer} cannot sync {name}: {done['cannot']}", flush=True)
                else:
                    runs.setdefault(peer, []).append(done)
    finally:
        server.close()
    result.update(summarise(runs))
    if cannot:
        result["cannot"] = cannot
    return result


CONTENDER = 0.5  # a ceiling variant slower than this share of the first pair's best is not run again


def contenders(variants: dict[str, Any]) -> list[str]:
    """The ceiling variants worth running after the first pair: within ``CONTENDER`` of its best.

    Every variant ran in every pair before, and at 1M realistic rows the slow ones (json+rows at
    ~20k rows/s, msgspec+columns, msgspec+thread) took ~3 of the ~4 minutes of each ceiling run:
    the whole run passed 20 minutes while those variants never came near winning.
    """
    best = variants[variants["best"]]
    return [name for name, rate in variants.items() if name != "best" and rate >= CONTENDER * best]


def ceiling_run(folder: Path, rows: int, variants: list[str] | None = None) -> dict[str, Any]:
    """One ceiling.py run: ``variants`` only (default: every variant); its best is the ceiling."""
    wall, _, out, _ = run_rss([PY, str(HERE / "ceiling.py"), str(folder), *(variants or [])])
    found = json.loads(out)
    best = found["best"]
    return {"rows_per_s": found[best], "seconds": round(rows / found[best], 3), "best": best,
            "variants": found, "wall_seconds": round(wall, 2)}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each contestant's runs and medians, and each ratio as the median of the same pair's ratios (min–max).

    A pair's ratio divides two runs made back to back, so load that comes and goes moves both; the
    median of >= 5 such ratios is the figure (one run's ratio moved by more than the gap to a target).
    """
    out: dict[str, Any] = {}
    for who, done in runs.items():
        rates = [r["rows_per_s"] for r in done]
        median = statistics.median(rates)
        summary: dict[str, Any] = {"rows_per_s": round(median), "rows_per_s_range": [min(rates), max(rates)],
                                   "runs": done, "runs_seconds": [r["seconds"] for r in done]}
        if "peak_rss_mb" in done[0]:
            summary["runs_peak_rss_mb"] = [r["peak_rss_mb"] for r in done]
            summary["peak_rss_mb"] = statistics.median(summary["runs_peak_rss_mb"])
            summary["process_seconds"] = statistics.median(r["process_seconds"] for r in done)
        out[who] = summary
    bests = [r["best"] for r in runs["ceiling"]]
    out["ceiling"]["best"] = max(set(bests), key=bests.count)  # the variant that won most pairs
    out["ceiling_rows_per_s"] = out["ceiling"]["rows_per_s"]
    replica = [r["rows_per_s"] for r in runs["replica"]]
    out["ratios"] = {other: spread([a / b["rows_per_s"] for a, b in zip(replica, runs[other], strict=True)])
                     for other in runs if other != "replica"}
    return out


def replica_sync(server: Server, name: str, rows: int, db: Path) -> dict[str, Any]:
    wall, rss, _, err = run_rss(
        [PY, "-m", "replica", "sync", server.first, "--table", name, "--db", str(db), "--once", "--verbose"]
    )
    # Like the peers' own timers: from the start of the sync (its event loop running) to the commit (no start-up).
    seconds = float(re.findall(r"\(([0-9.]+) s since the sync began\)", err)[-1])
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    count = conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    conn.close()
    assert count == rows, (count, rows)
    return {"seconds": round(seconds, 2), "rows_per_s": round(rows / seconds), "process_seconds": round(wall, 2),
            "wall_seconds": round(wall, 2), "peak_rss_mb": round(rss, 1)}


def node_peer(server: Server, peer: str, name: str, rows: int) -> dict[str, Any]:
    """One peer run; ``{"cannot": {method: error}}`` when every way it has to sync the table fails."""
    cmd = ["node", str(HERE / "peer.mjs"), peer, server.first, name, str(rows)]
    if peer == "pglite":
        cmd.append(DDL[name])
    # pglite-sync's fastest initial insert is csv; it fails on some rows (wide), then insert, then json.
    failed: dict[str, str] = {}
    for method in ("csv", "insert", "json") if peer == "pglite" else ("-",):
        try:
            wall, rss, out, _ = run_rss(cmd, timeout=900, env={"PGLITE_INSERT": method})
            break
        except RuntimeError as exc:
            failed[method] = node_error(str(exc))
            print(f"  {peer} ({method}) failed: {failed[method]}")
    else:
        return {"cannot": failed}
    line = json.loads(out.strip().splitlines()[-1])
    run = {"seconds": round(line["seconds"], 2), "rows_per_s": round(rows / line["seconds"]),
           "process_seconds": round(wall, 2), "peak_rss_mb": round(rss, 1)}
    if peer == "pglite":
        run["initial_insert"] = method
    return run


def node_error(output: str) -> str:
    """The error a failed node run names (its last line is only node's version)."""
    found = [line.strip() for line in output.splitlines() if re.search(r"\b\w*Error\b|^\s*error:", line)]
    return found[-1][:200] if found else output.strip().splitlines()[-1][:200]


def percentiles(released: dict[str, float], seen: dict[str, float]) -> dict[str, Any]:
    lat = sorted(seen[i] - released[i] for i in released if i in seen)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"changes": len(lat), "p50_ms": round(q[49], 2), "p99_ms": round(q[98], 2), "max_ms": round(lat[-1], 2)}


def live(count: int, gap_ms: float, peers: bool, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    clients = {"replica": [PY, str(HERE / "live.py"), "replica", "{url}", str(tmp / "live.db"), str(count)]}
    if peers:
        clients["ts_client"] = ["node", str(HERE / "peer.mjs"), "live", "{url}", "live", str(count)]
    for name, template in clients.items():
        server = Server([PY, str(HERE / "live.py"), "server", "1000"])
        try:
            url = json.loads(server.first)["url"]
            client = subprocess.Popen([a.replace("{url}", url) for a in template], stdout=subprocess.PIPE, text=True,
                                      cwd=ROOT)
            assert client.stdout is not None and server.proc.stdin is not None and server.proc.stdout is not None
            json.loads(client.stdout.readline())  # ready: live
            time.sleep(0.5)
            server.proc.stdin.write(f"go {count} {gap_ms}\n")
            server.proc.stdin.flush()
            released = json.loads(server.proc.stdout.readline())["released"]
            seen = json.loads(client.stdout.readline())["seen"]
            client.wait(30)
            results[name] = percentiles(released, seen)
        finally:
            server.close()
    return results


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int, field: str = "VmRSS") -> float:
    """MB of ``field`` in the process's status: VmRSS now, VmHWM its peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle(shapes: int, window: float, tmp: Path) -> dict[str, Any]:
    server = Server([PY, str(HERE / "live.py"), "server", str(shapes)])
    try:
        url = json.loads(server.first)["url"]
        client = subprocess.Popen([PY, str(HERE / "live.py"), "idle", url, str(tmp / "idle.db"), str(shapes)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert client.stdout is not None and client.stdin is not None
        json.loads(client.stdout.readline())
        time.sleep(2)
        before, started = proc_cpu(client.pid), time.monotonic()
        time.sleep(window)
        cpu = (proc_cpu(client.pid) - before) / (time.monotonic() - started) * 100
        rss = proc_rss(client.pid)
        client.stdin.close()
        client.wait(30)
    finally:
        server.close()
    return {"shapes": shapes, "window_s": window, "cpu_percent_of_one_core": round(cpu, 2), "rss_mb": round(rss, 1)}


def facts() -> dict[str, Any]:
    def npm_version(name: str) -> str:
        path = ROOT / "node_peer" / "node_modules" / name / "package.json"
        return json.loads(path.read_text())["version"] if path.exists() else "missing"

    import httpx
    import msgspec

    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "python": platform.python_version(), "sqlite": apsw.sqlite_lib_version(), "apsw": apsw.apsw_version(),
        "httpx": httpx.__version__, "anyio": importlib.metadata.version("anyio"),
        "msgspec": msgspec.__version__, "node": node, "@electric-sql/client": npm_version("@electric-sql/client"),
        "@electric-sql/pglite": npm_version("@electric-sql/pglite"),
        "@electric-sql/pglite-sync": npm_version("@electric-sql/pglite-sync"),
        "cores": os.cpu_count(), "load_at_start": os.getloadavg(), "machine": platform.machine(), "system": platform.platform(),
    }


def ratio(r: dict[str, Any], other: str) -> str:
    """The statistic as printed: median (min–max) of the pairs' ratios."""
    x = r["ratios"][other]
    return f"{x['median']:.2f} ({x['min']:.2f}–{x['max']:.2f})"


def table(report: dict[str, Any]) -> str:
    lines = ["| dataset | rows | replica rows/s | replica process s | peak RSS MB | ceiling rows/s | "
             "replica/ceiling median (min–max) | TS client rows/s | pglite-sync rows/s | replica/pglite |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["initial"]:
        rep, ceil = r["replica"]["rows_per_s"], r["ceiling_rows_per_s"]
        client = r.get("client", {}).get("rows_per_s")
        pglite = r.get("pglite", {}).get("rows_per_s")
        lines.append(
            f"| {r['dataset']} ({r['bytes_per_row']} B/msg) | {r['rows']:,} | {rep:,} | "
            f"{r['replica'].get('process_seconds', '-')} | {r['replica']['peak_rss_mb']} | "
            f"{ceil:,} ({r['ceiling']['best']}) | {ratio(r, 'ceiling')} | {f'{client:,}' if client else '-'} | "
            f"{f'{pglite:,}' if pglite else 'cannot' if 'pglite' in r.get('cannot', {}) else '-'} | "
            f"{ratio(r, 'pglite') if pglite else '-'} |"
        )
    if "live" not in report:
        return "\n".join(lines)
    lines.append("")
    lines.append("| live latency (500 changes, 10 ms apart) | p50 ms | p99 ms | max ms |")
    lines.append("|---|---:|---:|---:|")
    for name, r in report["live"].items():
        lines.append(f"| {name} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    i = report["idle"]
    lines.append("")
    lines.append(f"Idle: {i['shapes']} live shapes, {i['window_s']} s: {i['cpu_percent_of_one_core']} % of one core, "
                 f"RSS {i['rss_mb']} MB.")
    return "\n".join(lines)


def targets(report: dict[str, Any]) -> list[str]:
    out = []
    for r in report["initial"]:
        median, goal = r["ratios"]["ceiling"]["median"], TARGETS[r["dataset"]]
        out.append(f"{r['dataset']} {r['rows']:,}: replica/ceiling {ratio(r, 'ceiling')} over {r['pairs']} pairs "
                   f"(target >= {goal}) {'MET' if median >= goal else 'not met'}")
        if "pglite" in r["ratios"]:
            median = r["ratios"]["pglite"]["median"]
            out.append(f"{r['dataset']} {r['rows']:,}: replica/pglite-sync {ratio(r, 'pglite')} (target >= 5) "
                       f"{'MET' if median >= 5 else 'not met'}")
        for peer, why in r.get("cannot", {}).items():  # the target holds "where it can sync the table at all"
            reasons = "; ".join(f"{method}: {error}" for method, error in why.items())
            out.append(f"{r['dataset']} {r['rows']:,}: {peer} cannot sync this table ({reasons})")
    # The memory targets take the largest peak at 1M and the smallest at 100k: the strictest reading.
    by = {(r["dataset"], r["rows"]): r["replica"].get("runs_peak_rss_mb", [r["replica"]["peak_rss_mb"]])
          for r in report["initial"]}
    for name in DDL:
        if (name, 1_000_000) in by and (name, 100_000) in by:
            big, small = max(by[(name, 1_000_000)]), min(by[(name, 100_000)])
            ok = big <= 150 and big <= 1.3 * small
            out.append(f"{name}: peak RSS 1M {big} MB, 1M/100k {big / small:.2f} (target <= 150 MB and <= 1.3) "
                       f"{'MET' if ok else 'not met'}")
    if "live" not in report:
        return out
    lr = report["live"]["replica"]
    ok = lr["p50_ms"] <= LIVE_P50_MS and lr["p99_ms"] <= LIVE_P99_MS
    out.append(f"live: replica p50 {lr['p50_ms']} ms, p99 {lr['p99_ms']} ms "
               f"(target <= {LIVE_P50_MS:g} / <= {LIVE_P99_MS:g}) {'MET' if ok else 'not met'}")
    cpu = report["idle"]["cpu_percent_of_one_core"]
    out.append(f"idle: 100 shapes {cpu} % of one core (target <= 2) {'MET' if cpu <= 2 else 'not met'}")
    return out


def chart(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: pip install -e '.[bench]' for the chart)")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, series = [], {"replica": [], "ceiling": [], "TS client": [], "pglite-sync": []}
    for r in report["initial"]:
        labels.append(f"{r['dataset']}\n{r['rows']:,}")
        series["replica"].append(r["replica"]["rows_per_s"])
        series["ceiling"].append(r["ceiling_rows_per_s"])
        series["TS client"].append(r.get("client", {}).get("rows_per_s", 0))
        series["pglite-sync"].append(r.get("pglite", {}).get("rows_per_s", 0))
    width = 0.2
    for i, (name, values) in enumerate(series.items()):
        ax1.bar([x + (i - 1.5) * width for x in range(len(labels))], values, width, label=name)
    ax1.set_xticks(range(len(labels)), labels)
    ax1.set_ylabel("rows/s (initial sync)")
    ax1.legend()
    ax1.set_title("Initial sync, loopback")
    names = list(report["live"])
    ax2.bar([x - 0.2 for x in range(len(names))], [report["live"][n]["p50_ms"] for n in names], 0.4, label="p50")
    ax2.bar([x + 0.2 for x in range(len(names))], [report["live"][n]["p99_ms"] for n in names], 0.4, label="p99")
    ax2.set_xticks(range(len(names)), names)
    ax2.set_ylabel("ms, server release -> committed / callback")
    ax2.set_title("Live latency, 500 changes")
    ax2.legend()
    fig.text(0.01, 0.01, f"{report['facts']['cores']} cores, Python {report['facts']['python']}, "
             f"SQLite {report['facts']['sqlite']}, node {report['facts']['node']}", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"chart: {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also sync 1,000,000 rows (adds ~10-15 minutes)")
    parser.add_argument("--no-peers", action="store_true", help="skip the node peers")
    parser.add_argument("--repeat", type=int, default=PAIRS,
                        help=f"alternating replica/ceiling pairs at each size (default and fewest for the statistic: {PAIRS})")
    parser.add_argument("--datasets", default=",".join(DDL), help=f"comma-separated, some of {', '.join(DDL)} (default: all)")
    parser.add_argument("--no-live", action="store_true", help="skip the live latency and idle cost phases")
    parser.add_argument("--no-chart", action="store_true", help="do not write docs/performance.png")
    parser.add_argument("--idle-window", type=float, default=30.0, help="seconds to sample idle CPU (default 30)")
    args = parser.parse_args()
    peers = not args.no_peers
    names = args.datasets.split(",")
    if unknown := set(names) - set(DDL):
        parser.error(f"unknown datasets: {', '.join(sorted(unknown))}")
    if args.repeat < PAIRS:
        print(f"note: {args.repeat} pairs is fewer than the statistic's {PAIRS}: the ratios are indicative only")
    if peers and not (ROOT / "node_peer" / "node_modules" / "@electric-sql" / "client").exists():
        print("node peers missing: run scripts/npm-peer (or pass --no-peers)")
        peers = False
    sizes = [100_000, 1_000_000] if args.full else [100_000]
    report: dict[str, Any] = {"facts": facts(), "initial": [], "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        # Live and idle first, on a quiet machine. After the initial syncs (GBs written with --full,
        # a 5 GB node peer just exited), writeback and reclaim stalled the live phase: p99 19-126 ms
        # in three full runs, where live-only runs measure 5-10 ms, before and after a 1M-row sync.
        if not args.no_live:
            print("live latency ...", flush=True)
            report["live"] = live(500, 10, peers, tmp)
            print("idle cost ...", flush=True)
            report["idle"] = idle(100, args.idle_window, tmp)
        for name in names:
            for rows in sizes:
                print(f"initial sync: {name} x {rows:,} ({args.repeat} pairs)", flush=True)
                report["initial"].append(initial(name, rows, peers, tmp, args.repeat))
                report["initial"][-1]["load_after"] = os.getloadavg()
    report["targets"] = targets(report)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print()
    print(table(report))
    print()
    for line in report["targets"]:
        print(line)
    print()
    print("facts: " + ", ".join(f"{k} {v}" for k, v in report["facts"].items()))
    print(f"json: {out.relative_to(ROOT)}")
    if not args.no_chart and not args.no_live:  # the chart has a live panel
        chart(report, ROOT / "docs" / "performance.png")


if __name__ == "__main__":
    main()
