"""A small fleet behind a real caching proxy (nginx, scripts/fleet/nginx.conf) with the fake as origin:
5 replicas of 2 shapes, a writer; the proxy collapses the fleet's requests into about one origin
request per change per shape definition, and every database converges to the origin's rows.

nginx is required in CI (``.ci/run`` installs it); locally the test skips without it."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from replica.testing import FakeElectric, serve_in_thread

FLEET = Path(__file__).resolve().parents[2] / "scripts" / "fleet"
sys.path.insert(0, str(FLEET))
from harness import Fleet, shape_of  # noqa: E402
from proxy import CachingProxy, nginx_binary  # noqa: E402

pytestmark = pytest.mark.integration

CLIENTS = 5
TABLES = ("t1", "t2")
ROWS = 20
COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "v": {"type": "int8"}}


def _need_nginx() -> None:
    if nginx_binary() is not None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("nginx is not installed (CI=true: .ci/run installs it; the fleet test must run)", pytrace=False)
    pytest.skip("nginx not installed; apt-get install -y nginx to run the fleet test")


@pytest.fixture
def fake() -> FakeElectric:
    fake = FakeElectric(long_poll_timeout=20.0)
    for table in TABLES:
        fake.create_table(table, COLUMNS, [{"id": str(i), "v": "0"} for i in range(1, ROWS + 1)])
    return fake


@pytest.fixture
def fleet(fake: FakeElectric, tmp_path: Path) -> Iterator[tuple[Fleet, CachingProxy]]:
    _need_nginx()
    with serve_in_thread(fake) as server, CachingProxy(f"{server.host}:{server.port}") as proxy:
        fleet = Fleet(proxy.url, tmp_path, TABLES, clients=CLIENTS, per_process=1)
        try:
            yield fleet, proxy
        finally:
            fleet.close()


def test_a_fleet_behind_nginx_costs_the_origin_one_request_per_change_and_converges(
    fake: FakeElectric, fleet: tuple[Fleet, CachingProxy]
) -> None:
    clients, proxy = fleet
    clients.wait_synced(timeout=60)
    for table in TABLES:  # every database at the origin's current position before the live phase
        clients.wait_visible(table, fake.lsn, timeout=30)
    before = len(fake.requests)

    changes = 12
    for i in range(changes):  # t1, t1, t2, t2, …: each change to one shape, the quiet one is probed
        table = TABLES[i // 2 % 2]
        started = time.time()
        lsn = fake.update(table, {"id": str(i % ROWS + 1), "v": str(i + 1)})
        seen = clients.wait_visible(table, lsn, timeout=30, since=started)
        # A change takes a long-poll answer, a probe of the quiet member and the cache lock's 0.5 s
        # wake-up: not a long-poll timeout (a second probe at one position, answered from the cache
        # with the first one's older up-to-date, made the group wait 20 s).
        assert max(seen.values()) - started < 5, (table, i, seen)

    live = Counter(shape_of(target) for _method, target, _at in fake.requests[before:])
    per_change = {table: live[table] / changes for table in TABLES}
    timeline = "\n".join(f"{at:.3f} {target}" for _m, target, at in fake.requests[before:])
    assert all(ratio <= 1.2 for ratio in per_change.values()), f"{per_change}\n{timeline}\n{proxy.errors()}"
    assert set(live) <= set(TABLES), live

    for i in range(4):  # transactions touching both shapes: replicas reach them at different moments
        with fake.transaction() as tx:
            for table in TABLES:
                tx.update(table, {"id": str(i + 1), "v": str(100 + i)})
        for table in TABLES:
            clients.wait_visible(table, fake.lsn, timeout=30)
    # Every replica sends the same live URL at one position (else the proxy cannot collapse them): the
    # cursor each echoes comes from the same shared answer, whatever path its group took.
    cursors: dict[tuple[str, str], set[str]] = {}
    for line in proxy.log():
        query = dict(parse_qsl(urlsplit(line.uri).query))
        if query.get("live") == "true":
            cursors.setdefault((query["table"], query["offset"]), set()).add(query.get("cursor", ""))
    split = {position: found for position, found in cursors.items() if len(found) > 1}
    assert not split, split

    for db in range(CLIENTS):
        for table in TABLES:
            want = [(int(row["id"]), int(row["v"] or 0)) for row in fake.rows(table).values()]
            assert sorted(clients.rows(db, table)) == sorted(want), (db, table)
    hits = [line for line in proxy.log() if not line.origin]
    assert hits, "the proxy never answered from its cache"


@pytest.mark.postgres
def test_the_fleet_benchmark_full_mode_with_the_postgres_dev_server_as_origin() -> None:
    """scripts/fleet/run.py --origin postgres, small: real Postgres changes through nginx to 5 replicas."""
    import json
    import subprocess

    from pg import require_postgres

    _need_nginx()
    require_postgres()
    done = subprocess.run([sys.executable, str(FLEET / "run.py"), "--origin", "postgres", "--clients", "5",
                           "--per-process", "5", "--changes", "6", "--rows", "20"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[0])
    assert report["mode"] == "full (Postgres dev server origin)"
    fleet, one = report["fleet"], report["one_client"]
    assert fleet["converged"] and one["converged"]
    assert fleet["origin_requests_per_change_per_shape"] <= 1.2, report
    assert fleet["initial_origin_requests"] <= 1.2 * one["initial_origin_requests"], report
    assert fleet["cache_hit_ratio"] > 0.5, report
