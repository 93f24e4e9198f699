"""The sync process (Replica(process="child"), the default): it dies with its parent, is restarted when
it dies alone, stops within bounds, and leaves no process or descriptor behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from oracle import expected, local, pk_of

from replica import Backoff, Replica, Shape
from replica.testing import FakeElectric, serve_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")]
COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "title": {"type": "text"}}


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


def make_fake(rows: int = 20, **kwargs: object) -> FakeElectric:
    fake = FakeElectric(long_poll_timeout=2.0, **kwargs)  # type: ignore[arg-type]
    fake.create_table("items", COLUMNS, rows=[{"id": str(i), "title": f"t{i}"} for i in range(1, rows + 1)])
    return fake


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid`` and that run replica's sync worker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z" and b"replica.sync.worker" in cmdline:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait(check: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def converged(fake: FakeElectric, db: Path) -> bool:
    return local(db, "items", pk_of(fake, "items")) == expected(fake, "items")


PARENT = """
import sys, time
from replica import Replica, Shape
replica = Replica(sys.argv[1], sys.argv[2], Shape("items"))
replica.start()
assert replica.wait_until_synced(30), replica.status()
print("synced", flush=True)
time.sleep(600)
"""


def test_the_sync_process_exits_soon_after_its_parent_is_killed(tmp_path: Path) -> None:
    fake = make_fake()
    with serve_in_thread(fake) as server:
        parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "a.db"), server.url],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert parent.stdout is not None and parent.stdout.readline().strip() == "synced"
            [child] = children(parent.pid)
            parent.kill()  # kill -9: nothing of the parent's runs any more
            parent.wait()
            killed = time.monotonic()
            wait(lambda: not alive(child), timeout=10, what="the orphaned sync process to exit")
            assert time.monotonic() - killed < 2.0
        finally:
            parent.kill()
            parent.wait()
            if parent.stdout is not None:
                parent.stdout.close()


@pytest.mark.guarantee("R3")
def test_a_killed_sync_process_is_restarted_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    fake = make_fake()
    db = tmp_path / "a.db"
    with serve_in_thread(fake) as server, Replica(db, server.url, Shape("items")) as replica:
        assert replica.process == "child" and replica.wait_until_synced(30)
        [first] = children(os.getpid())
        os.kill(first, signal.SIGKILL)
        wait(lambda: "killed by signal 9" in (replica.status()[0].error or ""), what="the death to show in status")
        assert replica.status()[0].state == "offline"
        fake.insert("items", {"id": "100", "title": "while it was down"})
        fake.update("items", {"id": "1", "title": "changed"})
        wait(lambda: converged(fake, db) and replica.status()[0].state == "live", what="the restarted process")
        [second] = children(os.getpid())
        assert second != first
    assert children(os.getpid()) == []


def test_a_sync_process_stopped_by_a_signal_from_elsewhere_is_restarted(tmp_path: Path) -> None:
    fake = make_fake()
    db = tmp_path / "a.db"
    with serve_in_thread(fake) as server, Replica(db, server.url, Shape("items")) as replica:
        assert replica.wait_until_synced(30)
        [first] = children(os.getpid())
        os.kill(first, signal.SIGTERM)
        wait(lambda: "stopped by SIGTERM" in (replica.status()[0].error or ""), what="the stop to show in status")
        fake.insert("items", {"id": "100", "title": "later"})
        wait(lambda: converged(fake, db) and replica.status()[0].state == "live", what="the restarted process")


@pytest.mark.guarantee("R6")
@pytest.mark.parametrize("when", ["initial sync", "long-poll"])
def test_stop_is_bounded_during_the_initial_sync_and_during_a_long_poll(tmp_path: Path, when: str) -> None:
    fake = make_fake(3000, chunk_bytes=4096) if when == "initial sync" else make_fake()
    fake.long_poll_timeout = 20.0
    db = tmp_path / "a.db"
    with serve_in_thread(fake) as server:
        replica = Replica(db, server.url, Shape("items"))
        replica.start()
        try:
            if when == "initial sync":
                wait(lambda: replica.status()[0].state == "syncing", what="the initial sync")
            else:
                assert replica.wait_until_synced(30)
                time.sleep(0.3)  # inside a 20 s long-poll now
        finally:
            started = time.monotonic()
            replica.stop(timeout=30)
            stopped = time.monotonic() - started
    assert stopped < 5.0, f"stop took {stopped:.1f} s"  # about a second, plus a commit in flight
    assert children(os.getpid()) == []
    assert replica.status()[0].state == "stopped"


def test_twenty_start_stop_cycles_leak_no_process_and_no_descriptor(tmp_path: Path) -> None:
    fake = make_fake()
    db = tmp_path / "a.db"

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    with serve_in_thread(fake) as server:
        for cycle in range(20):
            with Replica(db, server.url, Shape("items")) as replica:
                assert replica.wait_until_synced(30), replica.status()
            if cycle == 1:
                baseline = descriptors()  # after the first cycles: imports and the server's sockets settled
        assert descriptors() <= baseline + 2, "descriptors pile up across cycles"
    assert children(os.getpid()) == []


class HeardFake(FakeElectric):
    """Remembers each request's Authorization header."""

    heard: list[str | None]

    async def exchange(self, method: str, target: str, headers: Any = None, *, on_wire: bool = False) -> Any:
        self.heard.append({k.lower(): v for k, v in (headers or {}).items()}.get("authorization"))
        return await super().exchange(method, target, headers, on_wire=on_wire)


def test_headers_that_are_functions_are_asked_in_this_process_before_every_request(tmp_path: Path) -> None:
    fake = HeardFake(long_poll_timeout=2.0)
    fake.heard = []
    fake.create_table("items", COLUMNS, rows=[{"id": "1", "title": "t"}])
    asked: list[int] = []

    def token() -> str:
        asked.append(os.getpid())
        return f"Bearer token-{len(asked)}"

    with serve_in_thread(fake) as server, Replica(tmp_path / "a.db", server.url, Shape("items"),
                                                   headers={"Authorization": token}) as replica:
        assert replica.wait_until_synced(30)
        fake.insert("items", {"id": "100", "title": "x"})
        wait(lambda: replica.status()[0].rows == 2, what="the live change")
    assert len(asked) >= 3 and set(asked) == {os.getpid()}  # called here, not in the sync process
    assert fake.heard[:3] == ["Bearer token-1", "Bearer token-2", "Bearer token-3"]


def test_a_store_that_cannot_open_is_raised_by_run_as_inline(tmp_path: Path) -> None:
    fake = make_fake()
    db = tmp_path / "a.db"
    with serve_in_thread(fake) as server:
        holder = Replica(db, server.url, Shape("items"), process="inline")
        holder.start()
        try:
            assert holder.wait_until_synced(30)
            out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
                import sys, anyio, json
                from replica import Replica, Shape, StoreError
                try:
                    anyio.run(Replica(sys.argv[1], sys.argv[2], Shape("items")).run)
                except StoreError as exc:
                    print(json.dumps(str(exc)))
            """), str(db), server.url], capture_output=True, text=True, timeout=60)
        finally:
            holder.stop()
    assert "another replica is already writing" in json.loads(out.stdout)
