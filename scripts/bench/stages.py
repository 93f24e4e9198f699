"""Where the time of a sync goes, per step and thread (issue 17): wall and thread CPU of each step.

    .venv/bin/python scripts/bench/stages.py sync URL --table T --db PATH --once   (a `replica sync`)
    .venv/bin/python scripts/bench/stages.py live [COUNT]                          (live changes, 10 ms apart)

``sync`` runs the CLI in this process with the download, validation, conversion (per part), resolve,
bulk copy, apply and publish wrapped, and prints one line per call: start and end (ms since the
process started), wall and thread CPU ms, thread. ``live`` starts live.py's server, follows it with a
Replica and prints, per stage, p50/p99 ms from a change's release to the fetch returning, the body
parsed, the writer thread starting, the commit, and ``on_commit``. Loopback only; measurement, not a test.
"""

from __future__ import annotations

import functools
import inspect
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import replica.fast as fast
import replica.fast.bulk as bulk
import replica.fast.convert as convert
import replica.protocol.shapelog as shapelog
import replica.store.snapshots as snapshots
import replica.store.store as store
import replica.sync.http as http

HERE = Path(__file__).resolve().parent
T0 = time.perf_counter()
CALLS: list[tuple[str, str, float, float, float]] = []  # (step, thread, start, end, thread CPU)
EVENTS: list[tuple[str, float]] = []  # (step0 / step1, epoch ms) for the live stages


def _now_ms() -> float:
    return time.time_ns() / 1e6


def _wrap(owner: Any, attr: str) -> None:
    """Record each call of ``owner.attr`` (sync or async) in CALLS and EVENTS."""
    f = getattr(owner, attr)

    def record(start: float, cpu: float) -> None:
        CALLS.append((attr, threading.current_thread().name, start - T0, time.perf_counter() - T0,
                      time.thread_time() - cpu))
        EVENTS.append((attr + "1", _now_ms()))

    if inspect.iscoroutinefunction(f):
        @functools.wraps(f)
        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            EVENTS.append((attr + "0", _now_ms()))
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return await f(*args, **kwargs)
            finally:
                record(start, cpu)

        setattr(owner, attr, wrapped_async)
    else:
        @functools.wraps(f)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            EVENTS.append((attr + "0", _now_ms()))
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return f(*args, **kwargs)
            finally:
                record(start, cpu)

        setattr(owner, attr, wrapped)


def instrument() -> None:
    for owner, attr in [(convert, "convert"), (convert, "resolve"), (bulk, "write_inserts"), (http, "fetch"),
                        (snapshots, "publish"), (snapshots, "append"), (shapelog.ShapeLog, "receive"),
                        (store.Store, "apply")]:
        _wrap(owner, attr)
    fast.write_inserts = bulk.write_inserts  # the name the store calls


def sync(argv: list[str]) -> None:
    from replica.cli.commands import main

    try:
        main(argv)
    finally:
        for step, thread, start, end, cpu in sorted(CALLS, key=lambda c: c[2]):
            print(f"{start * 1000:8.1f} {end * 1000:8.1f} wall {(end - start) * 1000:6.1f} cpu {cpu * 1000:6.1f}  "
                  f"{thread[:16]:16s} {step}")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(f"process CPU {usage.ru_utime + usage.ru_stime:.2f} s")


def live(count: int) -> None:
    from replica import Replica, Shape

    server = subprocess.Popen([sys.executable, str(HERE / "live.py"), "server", "1000"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    url = json.loads(server.stdout.readline())["url"]
    seen: dict[str, float] = {}
    done, ready = threading.Event(), threading.Event()

    def on_commit(applied: Any) -> None:
        t = _now_ms()
        if not ready.is_set():
            ready.set()
            return
        for key in applied.keys.get("insert", ()):
            seen[key.rsplit("/", 1)[1].strip('"')] = t
        if len(seen) >= count:
            done.set()

    with tempfile.TemporaryDirectory() as tmp:
        rep = Replica(f"{tmp}/live.db", url, Shape("live"), on_commit=on_commit, process="inline")
        rep.start()
        try:
            ready.wait(30)
            time.sleep(0.5)
            server.stdin.write(f"go {count} 10\n")
            server.stdin.flush()
            released = json.loads(server.stdout.readline())["released"]
            done.wait(60)
        finally:
            rep.stop()
            server.stdin.write("quit\n")
            server.stdin.flush()
            server.wait(10)

    def last(step: str, t: float) -> float | None:
        times = [x for s, x in EVENTS if s == step and x <= t]
        return times[-1] if times else None

    names = ["release -> fetch returned", "-> body parsed", "-> writer thread started", "apply and commit",
             "-> on_commit", "total"]
    stages: dict[str, list[float]] = {name: [] for name in names}
    for key, committed in seen.items():
        marks = [released[key], last("fetch1", committed), last("receive1", committed), last("apply0", committed),
                 last("apply1", committed), committed]
        if any(m is None for m in marks) or marks[1] < marks[0]:  # type: ignore[operator]
            continue
        for name, a, b in zip(names, marks, marks[1:], strict=False):
            stages[name].append(b - a)  # type: ignore[operator]
        stages["total"].append(committed - marks[0])
    for name, values in stages.items():
        q = statistics.quantiles(values, n=100, method="inclusive")
        print(f"{name:28s} n={len(values)} p50 {q[49]:.2f} ms  p99 {q[98]:.2f} ms")


if __name__ == "__main__":
    instrument()
    if sys.argv[1] == "live":
        live(int(sys.argv[2]) if len(sys.argv) > 2 else 300)
    else:
        sync(sys.argv[1:])
