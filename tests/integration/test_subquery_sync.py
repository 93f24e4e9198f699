"""A subquery shape synced by the Replica over real loopback sockets, with long-polls and with SSE:
rows move in and out as memberships change, and the local table follows the fake's oracle. Over
SSE the move events travel inside the stream's batches (protocol/stream.py keeps them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from oracle import expected, local

from replica import Backoff, Replica, Shape
from replica.cli.status import read_status, render_table
from replica.testing import FakeElectric, serve_in_thread

pytestmark = pytest.mark.integration

INT = {"type": "int4"}
KEY = {"type": "int4", "pk_index": 0, "not_null": True}
WHERE = "project_id IN (SELECT project_id FROM memberships WHERE user_id = $1) OR owner = $1"


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_a_subquery_shape_follows_its_memberships(tmp_path: Path, live: str) -> None:
    fake = FakeElectric(long_poll_timeout=0.5, sse_timeout=1.0, keepalive_interval=0.2)
    fake.create_table("memberships", {"id": KEY, "user_id": INT, "project_id": INT},
                      rows=[{"id": "1", "user_id": "1", "project_id": "10"}])
    fake.create_table("issues", {"id": KEY, "project_id": INT, "owner": INT},
                      rows=[{"id": str(i), "project_id": str(10 + i % 4), "owner": str(i % 3)} for i in range(40)])
    db = tmp_path / "sub.db"
    shape = Shape("issues", where=WHERE, params={"1": "1"}, name="mine")

    def converged() -> bool:
        return local(db, "mine", ("id",)) == expected(fake, "issues", where=WHERE, params={"1": "1"})

    with serve_in_thread(fake) as server, Replica(db, server.url, shape, live=live) as replica:
        assert replica.wait_until_synced(15)
        assert converged()
        for step in range(8):
            project = str(10 + step % 4)
            with fake.transaction() as tx:
                tx.insert("memberships", {"id": str(100 + step), "user_id": "1", "project_id": project})
                tx.delete("memberships", {"id": "1" if step == 0 else str(99 + step)})
                tx.update("issues", {"id": str(step), "owner": "1"})
            time.sleep(0.05)
        wait_for(converged, "convergence after moves")
        fake.delete("memberships", {"id": "107"})  # every row of the membership's branch moves out
        wait_for(converged, "convergence after the last move-out")
        status = replica.status()[0]
    assert status.state == "live"
    assert live == "long-poll" or status.live_mode == "sse"
    [row] = read_status(db)  # what `replica status` shows: the table whose changes move the rows
    assert row["depends_on"] == ["memberships"]
    assert "mine: rows move in and out as memberships change" in render_table([row])
