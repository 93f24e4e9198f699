"""The fault matrix: every fault FakeElectric can inject × every phase of a sync, over loopback.

Each case must recover and converge (R9) without a hot loop (R5). Backoff is real here, not
``Backoff.testing()``: a fixed small delay (``Pace``) that counts its waits, so "no hot loop" is a
measured property: two identical consecutive requests are always separated by a backoff wait,
and the request count per second stays bounded. A Retry-After is a floor for the wait.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import anyio
import pytest
from oracle import expected, local, pk_of

from replica import Backoff, Replica, Shape
from replica.testing import FakeElectric, Fault, serve_in_thread
from replica.testing.fake.faults import FAULT_KINDS, PHASES, SSE_FAULTS

COLUMNS = {
    "id": {"type": "int8", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "done": {"type": "bool"},
    "price": {"type": "numeric"},
}
PAUSE = 0.03  # every backoff wait in these tests


def row(i: int) -> dict[str, str | None]:
    return {"id": str(i), "title": f"item {i}", "done": "t" if i % 2 else "f", "price": f"{i}.50"}


@dataclass(frozen=True)
class Pace(Backoff):
    """A backoff that always waits PAUSE (or the Retry-After floor) and records each wait."""

    waits: list[float] = field(default_factory=list, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = max(PAUSE, retry_after or 0.0)
        self.waits.append(wait)
        return wait


FAULTS = {
    "503 burst": Fault("status", status=503, times=3),
    "500": Fault("status", status=500, times=2),
    "502": Fault("status", status=502),
    "429 + Retry-After": Fault("status", status=429, retry_after=1),
    "503 + Retry-After": Fault("status", status=503, retry_after=1),
    "reset mid-body": Fault("reset"),
    "truncated body": Fault("truncate"),
    "stall past the watchdog": Fault("stall", seconds=2.0),
    "malformed JSON": Fault("malformed"),
    "no electric-offset": Fault("drop_headers", headers=("electric-offset",)),
    "no electric-handle": Fault("drop_headers", headers=("electric-handle",)),
    "no schema or cursor": Fault("drop_headers", headers=("electric-schema", "electric-cursor")),
    "stale cache, expired handle": Fault("stale", times=2),
    "409 with a handle": Fault("must_refetch", handle=True),
    "409 without a handle": Fault("must_refetch", handle=False),
}


def test_the_matrix_covers_every_fault_kind_and_phase() -> None:
    assert {f.kind for f in FAULTS.values()} == FAULT_KINDS - SSE_FAULTS  # those: tests/integration/test_sse.py
    assert set(PHASE_ORDER) == PHASES


PHASE_ORDER = ["initial", "snapshot", "catchup", "live"]


def converged(fake: FakeElectric, db: Path) -> bool:
    return local(db, "items", pk_of(fake, "items")) == expected(fake, "items")


def query(target: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(parse_qsl(urlsplit(target).query, keep_blank_values=True)))


@pytest.mark.integration
@pytest.mark.guarantee("R5")
@pytest.mark.guarantee("R9")
@pytest.mark.parametrize("phase", PHASE_ORDER)
@pytest.mark.parametrize("name", FAULTS)
def test_every_fault_in_every_phase_recovers_and_converges_without_a_hot_loop(
    tmp_path: Path, name: str, phase: str
) -> None:
    fault = replace(FAULTS[name], phase=phase)
    db = tmp_path / "replica.db"
    fake = FakeElectric(chunk_bytes=1200, long_poll_timeout=0.3)
    fake.create_table("items", COLUMNS, rows=[row(i) for i in range(1, 61)])
    pace = Pace()
    with serve_in_thread(fake) as server:

        def new_replica() -> Replica:
            return Replica(db, server.url, Shape("items"), live_timeout=1.0, request_timeout=1.0, backoff=pace,
                           process="inline")  # the Pace records the waits in this process

        if fault.kind == "stale" or phase == "catchup":
            # a first sync: something to catch up on, and cached answers of a handle about to expire
            anyio.run(functools.partial(new_replica().run, once=True))
            fake.insert("items", row(901))
        if fault.kind == "stale":
            fake.rotate("items")  # a CDN still holds answers of the old handle
        replica = new_replica()
        first = len(fake.requests)
        if phase == "catchup":
            # only a run that must finish (--once) catches up with non-live requests; one that
            # resumes to follow goes straight to live long-polls
            fake.faults.add(fault)

            async def catch_up() -> None:
                with anyio.fail_after(15):
                    await replica.run(once=True)

            anyio.run(catch_up)
            replica = new_replica()
            replica.start()
        elif phase == "live":
            replica.start()
            assert replica.wait_until_synced(10)
            fake.faults.add(fault)
            fake.insert("items", row(902))
        else:
            fake.faults.add(fault)
            replica.start()
        try:
            deadline = time.monotonic() + 15
            while not (fake.faults.fired and converged(fake, db) and replica.status()[0].state == "live"):
                assert time.monotonic() < deadline, f"did not recover: {replica.status()} fired={fake.faults.fired}"
                time.sleep(0.02)
            time.sleep(0.2)  # a hot loop would show up here
        finally:
            replica.stop()
    assert fake.faults.fired, "the fault never fired: the case tested nothing"
    assert converged(fake, db)
    requests = fake.requests[first:]
    # R5: the same request twice in a row only after a backoff wait (or a Retry-After)
    floor = max(PAUSE, fault.retry_after or 0.0) * 0.8
    for (_m, a, t0), (_n, b, t1) in zip(requests, requests[1:], strict=False):
        if query(a) == query(b):
            assert t1 - t0 >= floor, f"resent {b} after {t1 - t0:.3f} s: a hot loop"
    elapsed = requests[-1][2] - requests[0][2]
    assert len(requests) <= 40 + 25 * elapsed, f"{len(requests)} requests in {elapsed:.1f} s: a hot loop"
    if fault.kind == "status" and fault.retry_after:
        assert fault.retry_after in pace.waits, "Retry-After was not used as the floor of the wait"


@pytest.mark.integration
@pytest.mark.guarantee("R5")
def test_a_cache_that_keeps_serving_an_expired_handle_is_not_a_hot_loop(tmp_path: Path) -> None:
    db = tmp_path / "replica.db"
    fake = FakeElectric(chunk_bytes=1200, long_poll_timeout=0.3)
    fake.create_table("items", COLUMNS, rows=[row(i) for i in range(1, 21)])
    pace = Pace()
    with serve_in_thread(fake) as server:
        anyio.run(functools.partial(Replica(db, server.url, Shape("items"), backoff=pace, process="inline").run, once=True))
        fake.rotate("items")
        fake.faults.add(Fault("stale", times=12))  # more stale answers than the cache-buster retries
        replica = Replica(db, server.url, Shape("items"), backoff=pace, live_timeout=1.0, request_timeout=1.0,
                          process="inline")
        replica.start()
        try:
            deadline = time.monotonic() + 15
            while not (converged(fake, db) and replica.status()[0].state == "live" and not fake.faults.pending):
                assert time.monotonic() < deadline, f"did not recover: {replica.status()}"
                time.sleep(0.02)
        finally:
            replica.stop()
    assert len(fake.faults.fired) == 12
    assert pace.waits, "gave up on the cache-buster without backing off"
