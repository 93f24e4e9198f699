"""Live latency and idle cost: a FakeElectric that releases changes, and a replica client.

    live.py server ROWS              serve table ``live`` (ROWS rows); stdin "go N MS" inserts N rows
                                     MS ms apart and prints {"released": {id: epoch_ms}}; "requests"
                                     prints {"requests": n, "live": n, "sse": n} (counts so far); "quit" exits
    live.py replica URL DB COUNT [PROCESS [MODE]]   sync ``live`` (PROCESS: inline, the default, or child);
                                     print {"ready": true} when live, then {"seen": {id: epoch_ms}}
                                     once COUNT new rows were committed (heard by on_commit here)
    live.py idle URL DB SHAPES [MODE]    sync SHAPES one-row shapes of ``live`` and stay live until killed;
                                     prints {"ready": true} when every shape is live

MODE is how live changes arrive: long-poll (default) or sse. The server keeps Electric's timings
(20 s long-polls; SSE answers of 60 s with a keep-alive after 21 s of silence).

Times are wall-clock (time.time_ns) so two processes compare on one machine.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from replica import Replica, Shape
from replica.testing import FakeElectric, serve_in_thread

COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "note": {"type": "text"}}


def now_ms() -> float:
    return time.time_ns() / 1e6


def server(rows: int) -> None:
    fake = FakeElectric(long_poll_timeout=20.0)
    fake.create_table("live", COLUMNS, [{"id": str(i), "note": "seed"} for i in range(1, rows + 1)])
    with serve_in_thread(fake) as srv:
        print(json.dumps({"url": srv.url}), flush=True)
        next_id = rows + 1
        for line in sys.stdin:
            parts = line.split()
            if not parts or parts[0] == "quit":
                return
            if parts[0] == "requests":
                targets = [target for _, target, _ in fake.requests]
                print(json.dumps({"requests": len(targets), "live": sum("live=true" in t for t in targets),
                                  "sse": sum("live_sse=true" in t for t in targets)}), flush=True)
                continue
            count, gap = int(parts[1]), float(parts[2]) / 1000
            released = {}
            for _ in range(count):
                time.sleep(gap)
                released[str(next_id)] = now_ms()
                fake.insert("live", {"id": str(next_id), "note": "x"})
                next_id += 1
            print(json.dumps({"released": released}), flush=True)


def replica(url: str, db: str, count: int, process: str = "inline", live: str = "long-poll") -> None:
    seen: dict[str, float] = {}
    done = threading.Event()
    ready = threading.Event()

    def on_commit(applied: object) -> None:
        t = now_ms()
        if not ready.is_set():
            ready.set()
            print(json.dumps({"ready": True}), flush=True)
            return
        for key in applied.keys.get("insert", ()):  # type: ignore[attr-defined]
            seen[key.rsplit("/", 1)[1].strip('"')] = t
        if len(seen) >= count:
            done.set()

    rep = Replica(db, url, Shape("live"), on_commit=on_commit, process=process, live=live)
    rep.start()
    try:
        done.wait(300)
    finally:
        rep.stop()
    print(json.dumps({"seen": seen}), flush=True)


def idle(url: str, db: str, shapes: int, live: str = "long-poll") -> None:
    rep = Replica(db, url, [Shape("live", where=f"id = {i}", name=f"idle_{i}", group=None)  # unrelated shapes
                            for i in range(1, shapes + 1)],
                  process="inline", live=live)  # the CPU measured is this process's
    rep.start()
    if not rep.wait_until_synced(120):
        raise SystemExit("idle shapes did not all reach up-to-date")
    print(json.dumps({"ready": True}), flush=True)
    try:
        sys.stdin.read()  # until the harness closes stdin
    finally:
        rep.stop()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        server(int(sys.argv[2]))
    elif mode == "replica":
        replica(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:7])
    elif mode == "idle":
        idle(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:6])
