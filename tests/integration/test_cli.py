"""`replica sync` as a subprocess against the loopback fake: the CLI contract, exit codes and signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from oracle import expected, local

from replica.testing import FakeElectric, serve_in_thread

pytestmark = pytest.mark.integration

COLUMNS = {
    "id": {"type": "int4", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "status": {"type": "text"},
}


@pytest.fixture
def fake() -> FakeElectric:
    fake = FakeElectric(chunk_bytes=1024, long_poll_timeout=0.5)
    rows = [{"id": str(i), "title": f"t{i}", "status": "open" if i % 2 else "done"} for i in range(1, 101)]
    fake.create_table("items", COLUMNS, rows=rows)
    return fake


@pytest.fixture
def url(fake: FakeElectric) -> Iterator[str]:
    with serve_in_thread(fake) as server:
        yield server.url


def replica(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ELECTRIC_SECRET"}
    return subprocess.run([sys.executable, "-m", "replica", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_once_syncs_and_a_second_run_resumes(fake: FakeElectric, url: str, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    done = replica("sync", url, "--table", "public.items", "--db", str(db), "--once")
    assert done.returncode == 0, done.stderr
    assert local(db, "items", ("id",)) == expected(fake, "items")
    assert oct(db.stat().st_mode & 0o777) == oct(0o600)
    first = len(fake.requests)
    fake.insert("items", {"id": "500", "title": "new", "status": "open"})
    again = replica("sync", url, "--table", "items", "--db", str(db), "--once")
    assert again.returncode == 0, again.stderr
    query = parse_qs(urlsplit(fake.requests[first][1]).query)
    assert query["offset"] != ["-1"], "the second run did not resume"
    assert local(db, "items", ("id",)) == expected(fake, "items")


def test_where_params_columns_and_name(fake: FakeElectric, url: str, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    done = replica("sync", url, "--table", "items", "--db", str(db), "--name", "open_items", "--where",
                   "status = $1", "--param", "1=open", "--columns", "id,status", "--replica", "full",
                   "--header", "X-Trace: abc", "--once")
    assert done.returncode == 0, done.stderr
    want = expected(fake, "items", where="status = $1", params={"1": "open"}, columns=["id", "status"])
    assert local(db, "open_items", ("id",)) == want and len(want) == 50


@pytest.mark.parametrize(
    "args",
    [
        ["sync", "URL", "--db", "DB"],  # no --table
        ["sync", "URL", "--table", "items"],  # no --db
        ["sync", "URL", "--table", "items", "--db", "DB", "--param", "x"],
        ["sync", "URL", "--table", "items", "--db", "DB", "--where", "a = $1", "--param", "2=x"],
        ["sync", "URL", "--table", "items", "--db", "DB", "--header", "no colon"],
        ["sync", "URL", "--table", "items", "--db", "DB", "--replica", "partial"],
        ["sync", "URL", "--table", "items", "--db", "DB", "--columns", ","],
        ["sync", "ftp://example/v1/shape", "--table", "items", "--db", "DB"],
        ["sync", "URL", "--table", "a.b.c", "--db", "DB"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2_before_any_request(fake: FakeElectric, url: str, tmp_path: Path,
                                                 args: list[str]) -> None:
    db = tmp_path / "app.db"
    args = [url if a == "URL" else str(db) if a == "DB" else a for a in args]
    done = replica(*args)
    assert done.returncode == 2, done.stderr
    assert "error" in done.stderr.lower()
    assert fake.requests == [] and not db.exists()


@pytest.mark.parametrize("table", ["missing", "items"])
def test_refused_shape_exits_1_and_leaves_no_database(url: str, tmp_path: Path, table: str) -> None:
    db = tmp_path / "app.db"
    args = ["sync", url, "--table", table, "--db", str(db), "--once"]
    if table == "items":
        args += ["--columns", "title"]  # leaves out the primary key: the server refuses it
    done = replica(*args)
    assert done.returncode == 1
    assert "400" in done.stderr and "refused" in done.stderr
    assert not db.exists()


def test_wrong_secret_exits_1_without_showing_it(tmp_path: Path) -> None:
    fake = FakeElectric(secret="right")
    fake.create_table("items", COLUMNS)
    with serve_in_thread(fake) as server:
        done = replica("sync", server.url, "--table", "items", "--db", str(tmp_path / "a.db"), "--once",
                       "--secret", "CANARY-42", "--verbose")
    assert done.returncode == 1 and "401" in done.stderr
    assert "CANARY" not in done.stderr + done.stdout


@pytest.mark.guarantee("R6")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_a_live_follow_within_a_second(fake: FakeElectric, url: str, tmp_path: Path,
                                                      sig: int) -> None:
    db = tmp_path / "app.db"
    fake.long_poll_timeout = 20.0
    with subprocess.Popen([sys.executable, "-m", "replica", "sync", url, "--table", "items", "--db", str(db)],
                          stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 15
        while not any("live=true" in target for _, target, *_ in fake.requests):
            assert time.monotonic() < deadline and proc.poll() is None, "never went live"
            time.sleep(0.02)
        time.sleep(0.2)
        started = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(5)
        elapsed = time.monotonic() - started
        errors = proc.stderr.read() if proc.stderr else ""
    assert code == 0, errors
    assert elapsed < 1.5
    assert local(db, "items", ("id",)) == expected(fake, "items")
