"""Live mode over Server-Sent Events, end to end over loopback (issue 20): held streams, their end and
reconnect, 409 at reconnect, keep-alives, every SSE fault, the fallback to long-polls and the watchdog."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from oracle import expected, local

from replica import Applied, Backoff, Replica, Shape
from replica.protocol.wire import Offset
from replica.testing import FakeElectric, Fault, serve_in_thread
from replica.testing.fake.faults import SSE_FAULTS

pytestmark = pytest.mark.integration

COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "title": {"type": "text"}}


def make_fake(*, sse_timeout: float = 1.0, keepalive: float = 0.2, rows: int = 5) -> FakeElectric:
    fake = FakeElectric(long_poll_timeout=0.5, sse_timeout=sse_timeout, keepalive_interval=keepalive)
    fake.create_table("items", COLUMNS, rows=[{"id": str(i), "title": f"t{i}"} for i in range(1, rows + 1)])
    return fake


def live_requests(fake: FakeElectric, since: int = 0) -> list[dict[str, str]]:
    """The query of every live request after the first ``since`` requests."""
    queries = [dict(parse_qsl(urlsplit(target).query, keep_blank_values=True)) for _, target, _ in fake.requests[since:]]
    return [q for q in queries if q.get("live") == "true"]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def converged(fake: FakeElectric, db: Path) -> bool:
    return local(db, "items", ("id",)) == expected(fake, "items")


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


def test_live_changes_arrive_over_held_streams_that_reconnect_where_they_ended(tmp_path: Path) -> None:
    fake = make_fake(sse_timeout=0.8)
    db = tmp_path / "sse.db"
    commits: list[Applied] = []
    with serve_in_thread(fake) as server:
        replica = Replica(db, server.url, Shape("items"), live="sse", sse_silence=0.6, on_commit=commits.append)
        with replica:
            assert replica.wait_until_synced(10)
            first = len(fake.requests)
            for i in range(10, 30):
                with fake.transaction() as tx:  # three rows per transaction: a batch is never split
                    for j in range(3):
                        tx.insert("items", {"id": str(i * 10 + j), "title": "x"})
                time.sleep(0.1)
            fake.update("items", {"id": "1", "title": "changed"})
            fake.delete("items", {"id": "2"})
            wait_for(lambda: converged(fake, db), "convergence")
            time.sleep(1.0)  # at least one stream ends and another starts
            status = replica.status()[0]
        live = live_requests(fake, first)
    assert status.live_mode == "sse" and status.state == "live"
    assert live and all(q["live_sse"] == "true" and q["experimental_live_sse"] == "true" for q in live)
    assert len(live) < 22, f"{len(live)} live requests for 22 transactions: the streams did not hold"
    offsets = [Offset.parse(q["offset"]) for q in live]
    assert offsets == sorted(offsets), "a reconnect went back behind a committed batch"
    assert all(c.inserted % 3 == 0 for c in commits if not c.refetch), "a transaction was committed in parts (R2)"
    assert converged(fake, db)


def test_keep_alives_keep_a_quiet_stream_open_past_the_watchdog(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    fake = make_fake(sse_timeout=2.0, keepalive=0.2)
    db = tmp_path / "quiet.db"
    caplog.set_level(logging.INFO, logger="replica")
    with serve_in_thread(fake) as server:
        with Replica(db, server.url, Shape("items"), live="sse", sse_silence=0.6) as replica:
            assert replica.wait_until_synced(10)
            first = len(fake.requests)
            time.sleep(3.0)  # quiet: each stream lives its 2 s on keep-alives, the 0.6 s watchdog never fires
            quiet = live_requests(fake, first)
            fake.insert("items", {"id": "100", "title": "late"})
            wait_for(lambda: converged(fake, db), "the change after the quiet spell")
            mode = replica.status()[0].live_mode
    assert 1 <= len(quiet) <= 3, f"{len(quiet)} streams in 3 quiet seconds"
    assert mode == "sse"
    assert "silent" not in caplog.text


def test_a_rotation_ends_the_stream_and_the_reconnect_refetches_after_its_409(tmp_path: Path) -> None:
    fake = make_fake(sse_timeout=30.0)
    db = tmp_path / "rotate.db"
    with serve_in_thread(fake) as server:
        with Replica(db, server.url, Shape("items"), live="sse") as replica:
            assert replica.wait_until_synced(10)
            old = replica.status()[0].handle
            wait_for(lambda: bool(live_requests(fake)), "a held stream")
            time.sleep(0.2)
            fake.rotate("items")
            fake.insert("items", {"id": "50", "title": "after the rotation"})
            wait_for(lambda: converged(fake, db) and replica.status()[0].handle not in (None, old), "the refetch")
            # The rows are published at the snapshot's up-to-date; the state turns live just after.
            wait_for(lambda: replica.status()[0].state == "live", "live again")
            status = replica.status()[0]
    assert status.state == "live" and status.live_mode == "sse"


SSE_CASES = {
    "cut mid-event": Fault("sse_cut"),
    "buffering proxy": Fault("sse_buffer"),
    "stream that never sends": Fault("sse_silent"),
    "503 to the stream request": Fault("status", status=503),
    "stall before the headers": Fault("stall", seconds=1.0),
    "no electric-cursor": Fault("drop_headers", headers=("electric-cursor",)),
    "409 at reconnect": Fault("must_refetch", handle=True),
}


def test_the_sse_cases_cover_every_sse_fault() -> None:
    assert SSE_FAULTS <= {f.kind for f in SSE_CASES.values()}


@pytest.mark.guarantee("R2")
@pytest.mark.guarantee("R5")
@pytest.mark.guarantee("R9")
@pytest.mark.parametrize("name", SSE_CASES)
def test_every_sse_fault_recovers_converges_and_never_commits_half_a_batch(tmp_path: Path, name: str) -> None:
    fault = Fault(**{**SSE_CASES[name].__dict__, "phase": "live"})
    fake = make_fake(sse_timeout=1.5, keepalive=0.2)
    db = tmp_path / "fault.db"
    commits: list[Applied] = []
    with serve_in_thread(fake) as server:
        replica = Replica(db, server.url, Shape("items"), live="sse", sse_silence=0.5, live_timeout=0.8,
                          on_commit=commits.append)
        with replica:
            assert replica.wait_until_synced(10)
            first = len(fake.requests)
            fake.faults.add(fault)
            with fake.transaction() as tx:
                for i in range(200, 204):
                    tx.insert("items", {"id": str(i), "title": "batch"})
            wait_for(lambda: bool(fake.faults.fired) and converged(fake, db), f"recovery from {name}")
            time.sleep(0.3)
            status = replica.status()[0]
        requests = fake.requests[first:]
    assert status.state == "live" and status.live_mode == "sse", status  # one failure is no reason to fall back
    assert all(c.inserted in (0, 4) for c in commits if not c.refetch), "half a transaction became visible"
    elapsed = max(0.5, requests[-1][2] - requests[0][2])
    assert len(requests) <= 10 + 10 * elapsed, f"{len(requests)} requests in {elapsed:.1f} s: a hot loop"


def test_three_short_streams_in_a_row_fall_back_to_long_polls_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = make_fake(sse_timeout=0.05)  # every held stream ends at once, without data
    db = tmp_path / "short.db"
    caplog.set_level(logging.WARNING, logger="replica")
    with serve_in_thread(fake) as server:
        with Replica(db, server.url, Shape("items"), live="sse") as replica:
            assert replica.wait_until_synced(10)
            wait_for(lambda: replica.status()[0].live_mode == "sse-fallback", "the fallback", timeout=20)
            first = len(fake.requests)
            fake.insert("items", {"id": "77", "title": "over long-poll"})
            wait_for(lambda: converged(fake, db), "convergence after the fallback")
            time.sleep(0.6)
        after = live_requests(fake, first)
        streams = [q for q in live_requests(fake) if q.get("live_sse")]
    assert len(streams) == 3
    assert after and not any("live_sse" in q for q in after)
    warnings = [r.getMessage() for r in caplog.records if "falling back to long-polling" in r.getMessage()]
    assert len(warnings) == 1 and "within 1 s" in warnings[0], warnings


def test_a_buffering_proxy_trips_the_watchdog_until_the_shape_long_polls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = make_fake(sse_timeout=2.0)
    fake.faults.add(Fault("sse_buffer", times=50))
    db = tmp_path / "buffered.db"
    caplog.set_level(logging.WARNING, logger="replica")
    with serve_in_thread(fake) as server:
        with Replica(db, server.url, Shape("items"), live="sse", sse_silence=0.3) as replica:
            assert replica.wait_until_synced(10)
            fake.insert("items", {"id": "88", "title": "through the proxy"})
            wait_for(lambda: converged(fake, db) and replica.status()[0].live_mode == "sse-fallback", "fallback")
            fake.insert("items", {"id": "89", "title": "long-polled"})
            wait_for(lambda: converged(fake, db), "a change after the fallback")
    streams = [q for q in live_requests(fake) if q.get("live_sse")]
    assert 3 <= len(streams) <= 5  # three silent ones; an answer that had data at once closes and is no failure
    assert any("buffering" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_proxy_holding_back_even_the_headers_trips_the_watchdog_too(tmp_path: Path) -> None:
    fake = make_fake(sse_timeout=5.0)
    fake.faults.add(Fault("stall", seconds=1.0, phase="live", times=3))  # headers later than the watchdog
    db = tmp_path / "held.db"
    with serve_in_thread(fake) as server:
        with Replica(db, server.url, Shape("items"), live="sse", sse_silence=0.3) as replica:
            assert replica.wait_until_synced(10)
            wait_for(lambda: replica.status()[0].live_mode == "sse-fallback", "the fallback")
            fake.insert("items", {"id": "90", "title": "long-polled"})
            wait_for(lambda: converged(fake, db), "a change after the fallback")
    assert len(fake.faults.fired) == 3


def test_a_server_that_answers_sse_requests_with_json_makes_the_shape_long_poll(tmp_path: Path) -> None:
    fake = make_fake()

    async def no_sse(request: httpx.Request) -> httpx.Response:  # an old Electric, or a proxy dropping the flag
        url = request.url.copy_remove_param("live_sse").copy_remove_param("experimental_live_sse")
        return await fake.handler(httpx.Request(request.method, url, headers=request.headers))

    db = tmp_path / "json.db"
    with Replica(db, "http://fake/v1/shape", Shape("items", live="sse"), transport=httpx.MockTransport(no_sse)) as rep:
        assert rep.wait_until_synced(10)
        fake.insert("items", {"id": "60", "title": "x"})
        wait_for(lambda: converged(fake, db) and rep.status()[0].live_mode == "sse-fallback", "the fallback")
        fake.insert("items", {"id": "61", "title": "y"})
        wait_for(lambda: converged(fake, db), "a long-polled change")


def test_a_shape_s_own_live_overrides_the_replica_s(tmp_path: Path) -> None:
    fake = make_fake()
    db = tmp_path / "mixed.db"
    shapes = [Shape("items", name="streamed", live="sse"), Shape("items", name="polled")]
    with serve_in_thread(fake) as server, Replica(db, server.url, shapes, live="long-poll") as replica:
        assert replica.wait_until_synced(10)
        wait_for(lambda: len(live_requests(fake)) >= 2, "both shapes live")
        modes = {s.name: s.live_mode for s in replica.status()}
    assert modes == {"streamed": "sse", "polled": "long-poll"}


@pytest.mark.guarantee("R6")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_held_stream_stops_within_a_second(tmp_path: Path, sig: int) -> None:
    fake = make_fake(sse_timeout=60.0, keepalive=21.0)
    db = tmp_path / "app.db"
    with serve_in_thread(fake) as server:
        cmd = [sys.executable, "-m", "replica", "sync", server.url, "--table", "items", "--db", str(db),
               "--live", "sse"]
        with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) as proc:
            wait_for(lambda: any(q.get("live_sse") for q in live_requests(fake)) or proc.poll() is not None,
                     "a held stream")
            assert proc.poll() is None
            fake.insert("items", {"id": "9", "title": "while held"})
            wait_for(lambda: converged(fake, db), "the change over the stream")
            time.sleep(0.2)
            started = time.monotonic()
            proc.send_signal(sig)
            code = proc.wait(5)
            elapsed = time.monotonic() - started
            errors = proc.stderr.read() if proc.stderr else ""
    assert code == 0, errors
    assert elapsed < 1.5
    assert converged(fake, db)


def test_the_daemon_config_s_live_top_level_and_per_shape(tmp_path: Path) -> None:
    from test_daemon import Daemon, free_port, replica, write_config

    fake = make_fake(sse_timeout=1.0)
    shapes = '[[shapes]]\ntable = "items"\n[[shapes]]\ntable = "items"\nname = "polled"\nlive = "long-poll"\n'
    with serve_in_thread(fake) as server:
        config = write_config(tmp_path / "replica.toml", server.url,
                              extra=f'live = "sse"\nlisten = "127.0.0.1:{free_port()}"', shapes=shapes)
        daemon = Daemon(config)
        try:
            daemon.wait_for(lambda: daemon.readyz()[0] == 200)
            fake.insert("items", {"id": "70", "title": "streamed"})
            daemon.wait_for(lambda: local(tmp_path / "app.db", "items", ("id",)) == expected(fake, "items"))
            modes = {s["name"]: s["live_mode"] for s in daemon.readyz()[1]["shapes"]}
            done = replica("status", "-c", str(config), "--json")
            code, elapsed = daemon.stop()
        finally:
            daemon.close()
    assert modes == {"items": "sse", "polled": "long-poll"}
    assert done.returncode == 0 and {r["name"]: r["live_mode"] for r in json.loads(done.stdout)} == modes
    assert any(q.get("live_sse") for q in live_requests(fake))
    assert code == 0 and elapsed < 2


@pytest.mark.guarantee("R11")
def test_a_group_of_sse_shapes_never_shows_half_a_transfer_and_publishes_promptly(tmp_path: Path) -> None:
    import threading

    from test_groups import EACH, ROWS, accounts, converged, totals, transfer

    fake = accounts(long_poll=20.0)  # a quiet member's held stream and long-poll would wait long
    db = tmp_path / "g.db"
    values = {(t, i): EACH for t in ("acct_a", "acct_b") for i in range(1, ROWS + 1)}
    seen: list[tuple[int, int] | None] = []
    updated = threading.Event()

    def on_commit(applied: Any) -> None:
        if applied.name == "acct_a" and applied.updated:
            updated.set()

    with serve_in_thread(fake) as server, Replica(db, server.url, [Shape("acct_a"), Shape("acct_b")],
                                                   live="sse", on_commit=on_commit) as replica:
        assert replica.wait_until_synced(30)
        time.sleep(0.5)  # both hold their streams now
        started = time.monotonic()
        # Changes to one quiet member, each moving 5 between two of its rows: every state keeps the
        # total, so a read while they arrive is never a false alarm (a +1 and back was: Postgres had it).
        for a, b in ((1, 2), (2, 1), (1, 2)):
            values[("acct_a", a)] -= 5
            values[("acct_a", b)] += 5
            with fake.transaction() as tx:
                tx.update("acct_a", {"id": str(a), "amount": str(values[("acct_a", a)])})
                tx.update("acct_a", {"id": str(b), "amount": str(values[("acct_a", b)])})
        wait_for(lambda: updated.is_set() and converged(fake, db) and any(
            q.get("live_sse") and q["table"] == "acct_a" for q in live_requests(fake)), "the change to one member")
        prompt = time.monotonic() - started
        thread = threading.Thread(target=lambda: [transfer(fake, values, i) or time.sleep(0.004) for i in range(200)])
        thread.start()
        while thread.is_alive():
            seen.append(totals(db))
        thread.join()
        wait_for(lambda: converged(fake, db), "convergence", timeout=30)
        modes = {s.name: s.live_mode for s in replica.status()}
    assert prompt < 5, "the quiet member was not asked to catch up"
    assert modes == {"acct_a": "sse", "acct_b": "sse"}
    bad = [s for s in seen if s is not None and s != (2 * ROWS * EACH, 2 * ROWS)]
    assert len(seen) > 50 and bad == [], f"{len(bad)} reads saw a total Postgres never had: {bad[:5]}"
