"""fake.handler under httpx.MockTransport: long-polls are held and woken like Electric's."""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import pytest

from replica.testing import FakeElectric

pytestmark = pytest.mark.anyio
URL = "http://fake/v1/shape"


async def go_live(client: httpx.AsyncClient) -> dict[str, str]:
    first = await client.get(URL, params={"table": "items", "offset": "-1"})
    params = {"table": "items", "handle": first.headers["electric-handle"], "offset": "0_0"}
    second = await client.get(URL, params=params)
    assert "electric-up-to-date" in second.headers
    return {**params, "offset": second.headers["electric-offset"], "live": "true", "cursor": ""}


async def test_long_poll_waits_then_times_out(fake: FakeElectric) -> None:
    fake.long_poll_timeout = 0.3
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        params = await go_live(client)
        started = time.monotonic()
        response = await client.get(URL, params=params)
        assert 0.25 <= time.monotonic() - started < 2
        assert response.status_code == 200 and response.headers["electric-has-data"] == "false"
        assert response.json()[0]["headers"]["control"] == "up-to-date"
        assert response.headers["electric-offset"] == params["offset"]


async def test_long_poll_wakes_on_a_change(fake: FakeElectric) -> None:
    fake.long_poll_timeout = 10
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        params = await go_live(client)
        async with anyio.create_task_group() as tg:
            async def later() -> None:
                await anyio.sleep(0.1)
                fake.insert("items", {"id": "5"})

            tg.start_soon(later)
            started = time.monotonic()
            response = await client.get(URL, params=params)
        assert time.monotonic() - started < 2
        assert [m["key"] for m in response.json() if "key" in m] == ['"public"."items"/"5"']


async def test_long_poll_wakes_on_a_change_from_another_thread(fake: FakeElectric) -> None:
    fake.long_poll_timeout = 10
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        params = await go_live(client)
        timer = threading.Timer(0.1, lambda: fake.update("items", {"id": "1", "title": "z"}))
        timer.start()
        started = time.monotonic()
        response = await client.get(URL, params=params)
        timer.join()
        assert time.monotonic() - started < 2
        assert [m["value"] for m in response.json() if "key" in m] == [{"id": "1", "title": "z"}]


async def test_rotation_during_long_poll_is_409_at_once(fake: FakeElectric) -> None:
    fake.long_poll_timeout = 10
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        params = await go_live(client)
        timer = threading.Timer(0.1, lambda: fake.rotate("items"))
        timer.start()
        started = time.monotonic()
        response = await client.get(URL, params=params)
        timer.join()
        assert time.monotonic() - started < 2
        assert response.status_code == 409
        assert response.headers["electric-handle"] != params["handle"]


async def test_changes_to_other_tables_keep_waiting(fake: FakeElectric) -> None:
    fake.long_poll_timeout = 0.4
    fake.create_table("other", {"id": {"type": "int4", "pk_index": 0}})
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        params = await go_live(client)
        timer = threading.Timer(0.1, lambda: fake.insert("other", {"id": "1"}))
        timer.start()
        started = time.monotonic()
        response = await client.get(URL, params=params)
        timer.join()
        assert time.monotonic() - started >= 0.35
        assert response.headers["electric-has-data"] == "false"


async def test_many_concurrent_long_polls_all_wake(fake: FakeElectric) -> None:
    fake.long_poll_timeout = 10
    results: list[int] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        params = await go_live(client)

        async def poll() -> None:
            response = await client.get(URL, params=params)
            results.append(len([m for m in response.json() if "key" in m]))

        async with anyio.create_task_group() as tg:
            for _ in range(150):
                tg.start_soon(poll)
            await anyio.sleep(0.2)
            fake.insert("items", {"id": "5"})
    assert results == [1] * 150


async def test_out_of_bounds_waits_briefly_then_400(fake: FakeElectric) -> None:
    fake.long_poll_timeout = 0.4
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        params = await go_live(client)
        started = time.monotonic()
        response = await client.get(URL, params={**params, "offset": f"{fake.lsn + 10}_0", "live": "false"})
        assert response.status_code == 400
        assert 0.15 <= time.monotonic() - started < 2
