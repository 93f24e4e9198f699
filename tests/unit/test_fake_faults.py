"""Each fault kind, through fake.respond and through the MockTransport handler."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from replica.testing import FakeElectric, Fault

URL = "http://fake/v1/shape"


def initial(fake: FakeElectric) -> tuple[str, str]:
    response = fake.respond("GET", "/v1/shape?table=items&offset=-1")
    return response.headers["electric-handle"], response.headers["electric-offset"]


def test_fault_validation() -> None:
    for bad in (
        lambda: Fault("explode"),
        lambda: Fault("status", status=200),
        lambda: Fault("status", times=0),
        lambda: Fault("stall", seconds=-1),
        lambda: Fault("reset", phase="sometimes"),
        lambda: Fault("status", retry_after=-1),
    ):
        with pytest.raises(ValueError):
            bad()
    assert Fault("drop_headers", headers="Electric-Handle").headers == ("electric-handle",)


def test_status_burst_with_retry_after(fake: FakeElectric) -> None:
    fake.faults.add(Fault("status", status=503, retry_after=2, times=2))
    for _ in range(2):
        response = fake.respond("GET", "/v1/shape?table=items&offset=-1")
        assert response.status == 503
        assert response.headers["retry-after"] == "2"
        assert response.headers["cache-control"] == "no-store"
        assert "message" in response.json()
    assert fake.respond("GET", "/v1/shape?table=items&offset=-1").status == 200
    assert len(fake.faults) == 0 and len(fake.faults.fired) == 2


def test_429_without_retry_after_and_faults_skip_health(fake: FakeElectric) -> None:
    fake.faults.add(Fault("status", status=429))
    assert fake.respond("GET", "/v1/health").status == 200
    response = fake.respond("GET", "/v1/shape?table=items&offset=-1")
    assert response.status == 429 and "retry-after" not in response.headers


def test_phases(fake: FakeElectric) -> None:
    fake.faults.add(Fault("status", status=500, phase="live"))
    fake.faults.add(Fault("status", status=502, phase="catchup"))
    fake.faults.add(Fault("status", status=504, phase="snapshot"))
    handle, offset = initial(fake)
    assert fake.respond("GET", f"/v1/shape?table=items&offset=0_0&handle={handle}").status == 504
    response = fake.respond("GET", f"/v1/shape?table=items&offset=0_0&handle={handle}")
    assert response.headers["electric-offset"] == "0_inf"
    assert fake.respond("GET", f"/v1/shape?table=items&offset=0_inf&handle={handle}").status == 502
    assert fake.respond("GET", f"/v1/shape?table=items&offset=0_inf&handle={handle}&live").status == 500
    assert fake.faults.pending == []
    fake.faults.add(Fault("status", phase="initial", times=5))
    fake.faults.clear()
    assert fake.respond("GET", "/v1/shape?table=items&offset=-1").status == 200


def test_reset_and_truncate_in_respond(fake: FakeElectric) -> None:
    fake.faults.add(Fault("reset"))
    with pytest.raises(ConnectionResetError):
        fake.respond("GET", "/v1/shape?table=items&offset=-1")
    whole = fake.respond("GET", "/v1/shape?table=items&offset=-1")
    fake.faults.add(Fault("truncate"))
    cut = fake.respond("GET", "/v1/shape?table=items&offset=-1")
    assert cut.status == 200 and cut.body == whole.body[: len(whole.body) // 2]
    with pytest.raises(ValueError):
        json.loads(cut.body)


def test_malformed_keeps_headers(fake: FakeElectric) -> None:
    fake.faults.add(Fault("malformed"))
    response = fake.respond("GET", "/v1/shape?table=items&offset=-1")
    assert response.status == 200 and response.headers["electric-offset"] == "0_0"
    with pytest.raises(ValueError):
        json.loads(response.body)


def test_drop_headers(fake: FakeElectric) -> None:
    fake.faults.add(Fault("drop_headers", headers=("electric-offset", "electric-schema")))
    response = fake.respond("GET", "/v1/shape?table=items&offset=-1")
    assert "electric-offset" not in response.headers and "electric-schema" not in response.headers
    assert "electric-handle" in response.headers and response.json()


def test_stale_replays_an_expired_handles_response(fake: FakeElectric) -> None:
    fake.faults.add(Fault("stale"))  # nothing expired yet: stays pending
    old_handle, _ = initial(fake)
    assert len(fake.faults) == 1
    fake.insert("items", {"id": "3"})
    fake.rotate("items")
    stale = fake.respond("GET", "/v1/shape?table=items&offset=-1&cache-buster=x")
    assert stale.status == 200 and stale.headers["electric-handle"] == old_handle
    assert '"3"' not in stale.body.decode()
    fresh = fake.respond("GET", "/v1/shape?table=items&offset=-1")
    assert fresh.headers["electric-handle"] != old_handle
    assert '"3"' in fresh.body.decode()


def test_must_refetch_expires_the_shape(fake: FakeElectric) -> None:
    handle, _ = initial(fake)
    fake.faults.add(Fault("must_refetch", phase="snapshot"))
    response = fake.respond("GET", f"/v1/shape?table=items&offset=0_0&handle={handle}")
    assert response.status == 409 and response.body == b'[{"headers":{"control":"must-refetch"}}]'
    new = response.headers["electric-handle"]
    assert new != handle
    assert response.headers["cache-control"] == "public, max-age=60, must-revalidate"
    assert fake.respond("GET", f"/v1/shape?table=items&offset=0_0&handle={handle}").status == 409
    fake.faults.add(Fault("must_refetch", handle=False))
    bare = fake.respond("GET", f"/v1/shape?table=items&offset=0_0&handle={new}")
    assert bare.status == 409 and "electric-handle" not in bare.headers
    assert bare.headers["cache-control"] == "public, max-age=1, must-revalidate"
    assert fake.respond("GET", f"/v1/shape?table=items&offset=0_0&handle={new}").status == 409


def test_stall_is_immediate_in_respond(fake: FakeElectric) -> None:
    fake.faults.add(Fault("stall", seconds=30))
    started = time.monotonic()
    assert fake.respond("GET", "/v1/shape?table=items&offset=-1").status == 200
    assert time.monotonic() - started < 1


@pytest.mark.anyio
async def test_handler_faults(fake: FakeElectric) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        fake.faults.add(Fault("reset"))
        with pytest.raises(httpx.ReadError):
            await client.get(URL, params={"table": "items", "offset": "-1"})
        fake.faults.add(Fault("truncate"))
        cut = await client.get(URL, params={"table": "items", "offset": "-1"})
        assert cut.status_code == 200
        with pytest.raises(ValueError):
            cut.json()
        fake.faults.add(Fault("stall", seconds=0.3))
        started = time.monotonic()
        stalled = await client.get(URL, params={"table": "items", "offset": "-1"})
        assert stalled.status_code == 200 and time.monotonic() - started >= 0.3
        fake.faults.add(Fault("status", status=503, retry_after=1))
        busy = await client.get(URL, params={"table": "items", "offset": "-1"})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
