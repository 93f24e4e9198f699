"""The fleet benchmark: N replicas behind nginx (scripts/fleet/nginx.conf) syncing the same shapes
while a writer changes rows; bounded in time, loopback only. Prints one JSON object (and, with
--table, the README's rows).

    python scripts/fleet/run.py                 # quick mode: the fake as origin, 50 replicas
    python scripts/fleet/run.py --clients 20 --per-process 5 --changes 40 --faults
    python scripts/fleet/run.py --origin postgres   # full mode: the Postgres dev server, real changes

Quick mode's origin is FakeElectric in this process; full mode's is the project's Postgres dev server
(PostgresElectric) over a throwaway cluster, the writer's changes made in Postgres with SQL
(scripts/fleet/sources.py). Either runs in this process, and its request log is the origin's load.
Each number is measured twice in one run, for one replica alone and for the fleet, through fresh
proxies: the ratio is what the proxy saves, on the same machine under the same load. ``--faults``
needs quick mode (it gives the fake new handles to imitate an origin restart).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from harness import Fleet, percentile, shape_of
from proxy import CachingProxy
from sources import TABLES, FakeSource, PostgresSource

from replica.testing import serve

Source = FakeSource | PostgresSource


class Origin:
    """The origin's service on a loopback port that stays the same across restarts."""

    def __init__(self, fake: Any) -> None:
        import anyio.from_thread

        self.fake = fake
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._server_cm: Any = None
        self.port = 0
        self.start()

    def start(self) -> None:
        self._server_cm = self._portal.wrap_async_context_manager(serve(self.fake, port=self.port))
        server = self._server_cm.__enter__()
        self.port = server.port

    def stop(self) -> None:
        self._server_cm.__exit__(None, None, None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stop()
        self._portal_cm.__exit__(None, None, None)


def origin_requests(fake: Any, since: int) -> dict[str, int]:
    counts = dict.fromkeys(TABLES, 0)
    for _method, target, _at in fake.requests[since:]:
        table = shape_of(target)
        if table in counts:
            counts[table] += 1
    return counts


def write(source: Source, fleet: Fleet, changes: int, gap: float, start: int = 0) -> list[float]:
    """``changes`` single-table updates (t1, t1, t2, t2, …); for each, seconds until every database shows it."""
    lags = []
    for i in range(start, start + changes):
        table = TABLES[i // 2 % 2]
        started = time.time()
        lsn = source.update(table, i % 20 + 1, i + 1)
        seen = fleet.wait_visible(table, lsn, timeout=60, since=started)
        lags.append(max(seen.values()) - started)
        time.sleep(gap)
    return lags


def converged(source: Source, fleet: Fleet) -> bool:
    for table in TABLES:
        want = source.rows(table)
        for db in range(fleet.clients):
            if sorted(fleet.rows(db, table)) != want:
                return False
    return True


@contextmanager
def fleet_behind_proxy(origin: Origin, clients: int, per_process: int, live: str = "long-poll"
                       ) -> Iterator[tuple[Fleet, CachingProxy]]:
    with tempfile.TemporaryDirectory(prefix="fleet-") as work, CachingProxy(origin.address) as proxy:
        fleet = Fleet(proxy.url, Path(work), TABLES, clients=clients, per_process=per_process, live=live)
        try:
            yield fleet, proxy
        finally:
            fleet.close()


def measure(source: Source, clients: int, per_process: int, changes: int, gap: float, faults: bool,
            live_mode: str = "long-poll") -> dict[str, Any]:
    fake = source.service
    origin = Origin(fake)
    try:
        with fleet_behind_proxy(origin, clients, per_process, live_mode) as (fleet, proxy):
            before = len(fake.requests)
            started = time.monotonic()
            fleet.wait_synced(timeout=120)
            for table in TABLES:
                fleet.wait_visible(table, fake.lsn, timeout=60)
            initial = origin_requests(fake, before)
            synced_s = time.monotonic() - started
            time.sleep(0.5)
            before = len(fake.requests)
            lags = write(source, fleet, changes, gap)
            live = origin_requests(fake, before)
            log = proxy.log()
            result: dict[str, Any] = {
                "clients": clients,
                "shapes": len(TABLES),
                "initial_origin_requests": sum(initial.values()),
                "initial_sync_s": round(synced_s, 2),
                "live_changes": changes,
                "origin_requests_per_change_per_shape": round(sum(live.values()) / (changes * len(TABLES)), 3),
                "cache_hit_ratio": round(sum(1 for line in log if not line.origin) / max(1, len(log)), 3),
                "visible_in_all_p50_s": round(percentile(lags, 50), 3),
                "visible_in_all_p99_s": round(percentile(lags, 99), 3),
                "visible_in_all_max_s": round(max(lags), 3),
                "converged": converged(source, fleet),
            }
            if faults:
                result.update(fault_runs(source, origin, fleet, proxy, changes, gap))
        return result
    finally:
        origin.close()
        source.close()


def fault_runs(source: Source, origin: Origin, fleet: Fleet, proxy: CachingProxy, changes: int,
               gap: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fake = source.service
    few = max(4, changes // 4)
    # The proxy restarts mid-run: every replica's long-poll breaks; the cache on disk stays.
    before = len(fake.requests)
    down = proxy.restart()
    lags = write(source, fleet, few, gap, start=1000)
    out["proxy_restart"] = {"down_s": round(down, 3), "origin_requests": sum(origin_requests(fake, before).values()),
                            "changes": few, "visible_in_all_max_s": round(max(lags), 3),
                            "converged": converged(source, fleet)}
    # The origin restarts with new handles: every replica is answered 409 and fetches its shapes again.
    before = len(fake.requests)
    started = time.time()
    origin.stop()
    source.rotate()
    origin.start()
    for table in TABLES:  # every database published the new snapshot
        fleet.wait(lambda t=table: len({r.db for r in fleet.snapshot() if r.table == t and r.refetch
                                        and r.at >= started}) == fleet.clients, 120, f"{table} refetched")
    recovered = time.time() - started
    counts = origin_requests(fake, before)
    statuses = [line.status for line in proxy.log() if line.at >= started]
    out["origin_restart"] = {"refetched_in_s": round(recovered, 2), "origin_requests": sum(counts.values()),
                             "origin_requests_per_shape": round(sum(counts.values()) / len(TABLES), 1),
                             "answered_409": statuses.count(409), "converged": converged(source, fleet)}
    # Stale cache: replicas that join now are served the old handle's offset=-1 answer (and its chunks)
    # from the proxy (s-maxage=3600): they must reach the new handle through a 409, without a loop (R5).
    before = len(fake.requests)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fleet-late-") as work:
        late = Fleet(proxy.url, Path(work), TABLES, clients=5, per_process=5)
        try:
            late.wait_synced(timeout=120)
            late.wait(lambda: converged(source, late), 120, "the late replicas to converge")
            stale = sum(1 for r in late.snapshot() if r.refetch) - 5 * len(TABLES)  # snapshots published first
            out["stale_cache_late_join"] = {"replicas": 5, "converged_in_s": round(time.monotonic() - started, 2),
                                            "origin_requests": sum(origin_requests(fake, before).values()),
                                            "stale_snapshots_replaced": stale, "converged": True}
        finally:
            late.close()
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| replicas | initial origin requests | origin req./change/shape | cache hits | visible in all p50 / p99 / max | converged |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['initial_origin_requests']} | {r['origin_requests_per_change_per_shape']} | "
                     f"{r['cache_hit_ratio']:.0%} | {r['visible_in_all_p50_s']:.2f} / {r['visible_in_all_p99_s']:.2f} / "
                     f"{r['visible_in_all_max_s']:.2f} s | {'yes' if r['converged'] else 'NO'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50, help="replicas in the fleet (default: %(default)s)")
    parser.add_argument("--per-process", type=int, default=10, help="replicas per client process (default: %(default)s)")
    parser.add_argument("--changes", type=int, default=40, help="live changes the writer makes (default: %(default)s)")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between changes (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=200, help="rows per table (default: %(default)s)")
    parser.add_argument("--faults", action="store_true", help="also restart the proxy, then the origin, mid-run")
    parser.add_argument("--table", action="store_true", help="print the README table rows too")
    parser.add_argument("--origin", choices=["fake", "postgres"], default="fake",
                        help="fake: quick mode; postgres: the Postgres dev server over a throwaway cluster")
    parser.add_argument("--live", choices=["long-poll", "sse"], default="long-poll",
                        help="how the replicas follow live changes (SSE through this proxy: see README)")
    args = parser.parse_args()
    if args.faults and args.origin != "fake":
        parser.error("--faults needs --origin fake (it gives the fake new handles to imitate an origin restart)")
    with ExitStack() as stack:
        if args.origin == "postgres":
            from replica.testing.postgres.cluster import PgCluster

            cluster = stack.enter_context(PgCluster.start())

            def source() -> Source:
                return PostgresSource(cluster, args.rows)
        else:
            def source() -> Source:
                return FakeSource(args.rows)

        one = measure(source(), 1, 1, args.changes, args.gap, False, args.live)
        many = measure(source(), args.clients, args.per_process, args.changes, args.gap, args.faults, args.live)
    report = {"mode": FakeSource.mode if args.origin == "fake" else PostgresSource.mode, "live": args.live, "one_client": one, "fleet": many,
              "initial_requests_vs_one_client": round(many["initial_origin_requests"] / one["initial_origin_requests"], 2),
              "live_requests_vs_one_client": round(many["origin_requests_per_change_per_shape"]
                                                   / one["origin_requests_per_change_per_shape"], 2),
              "p50_vs_one_client": round(many["visible_in_all_p50_s"] / max(1e-9, one["visible_in_all_p50_s"]), 2),
              "python": sys.version.split()[0]}
    print(json.dumps(report))
    if args.table:
        print(table([one, many]))
    return 0 if one["converged"] and many["converged"] else 1


if __name__ == "__main__":
    sys.exit(main())
