"""A/B: `replica sync --once` of one dataset by this tree and by another revision, alternating.

    chrt -f 10 .venv/bin/python scripts/bench/ab.py [--base main] [--dataset narrow] [--rows 100000] [--pairs 10]

For a change whose effect is smaller than the noise between runs on a shared machine: the base
revision (``git archive``, into a temporary folder, imported ahead of this tree through PYTHONPATH)
and this tree sync the same pre-encoded responses from the same static server, in pairs whose order
alternates (base first, then this tree first, …), so load that comes and goes hits both alike.
Prints each pair and the median of the pairs' speedups (base seconds / new seconds) with its
min–max. Seconds are the sync's own (from its event loop starting to the publish's on_commit, as
run.py reads them, but to the microsecond). Loopback only; measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from run import Server, dataset  # noqa: E402


def child(argv: list[str]) -> None:
    """Run the CLI in this process and print the sync's seconds, timed as its --verbose line times them."""
    import anyio

    import replica.cli.commands as commands

    marks: dict[str, float] = {}

    def run(*args: object, **kwargs: object) -> object:
        marks["start"] = time.monotonic()  # the CLI's own timer starts once the loop runs: ~the same instant
        return anyio.run(*args, **kwargs)  # type: ignore[arg-type]

    def say(*args: object, **kwargs: object) -> None:
        if args and "since the sync began" in str(args[0]):
            marks["end"] = time.monotonic()
        print(*args, **kwargs)  # type: ignore[call-overload]

    shim = type("AnyioShim", (), {"run": staticmethod(run), "__getattr__": lambda self, n: getattr(anyio, n)})()
    setattr(commands, "anyio", shim)  # noqa: B010 (the module's own name for anyio)
    setattr(commands, "print", say)  # noqa: B010
    code = commands.main(argv)
    print(f"AB-SECONDS {marks['end'] - marks['start']:.6f}", file=sys.stderr)
    sys.exit(code)


def sync(url: str, table: str, rows: int, base: Path | None) -> float:
    env = dict(os.environ)
    if base is not None:
        env["PYTHONPATH"] = str(base)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, __file__, "--child", "sync", url, "--table", table, "--db",
                               f"{tmp}/{table}.db", "--once", "--verbose"], capture_output=True, text=True, env=env,
                              cwd=tmp)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        return float(re.findall(r"AB-SECONDS ([0-9.]+)", done.stderr)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="the git revision to compare with (default: main)")
    parser.add_argument("--dataset", default="narrow")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    folder = dataset(args.dataset, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        archive = subprocess.run(["git", "archive", args.base, "replica"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        server = Server([sys.executable, str(HERE / "static_server.py"), str(folder)])
        speedups: list[float] = []
        seconds: dict[str, list[float]] = {"base": [], "new": []}
        try:
            for pair in range(args.pairs):
                order = ["base", "new"] if pair % 2 == 0 else ["new", "base"]
                took = {who: 0.0 for who in order}
                for who in order:
                    took[who] = sync(server.first, args.dataset, args.rows, base if who == "base" else None)
                    seconds[who].append(took[who])
                speedups.append(took["base"] / took["new"])
                print(f"pair {pair + 1}: base {took['base']:.3f} s, new {took['new']:.3f} s, speedup "
                      f"{speedups[-1]:.3f}, load {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            server.close()
    median = statistics.median
    print(f"{args.dataset} {args.rows:,} rows, {args.pairs} pairs, base {args.base}: base median "
          f"{median(seconds['base']):.3f} s, new {median(seconds['new']):.3f} s; speedup (base/new) median "
          f"{median(speedups):.3f} ({min(speedups):.3f}-{max(speedups):.3f})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
