"""First contact, as a new user meets it with the installed command: a wrong URL, an unreachable
server, `--once` in a script (`--timeout`, the summary line) and no empty database left behind.
Each runs `replica` as a subprocess against the loopback fake or a plain web server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import apsw
import pytest
from daemonproc import Daemon, free_port
from oracle import expected, local
from plainweb import serve_page

from replica.store import Store
from replica.testing import FakeElectric, Fault, sample_fake, serve_in_thread

pytestmark = pytest.mark.integration

BOUND = 15.0  # seconds: generous for a 2-core machine running other suites; the runs below need ~1-3 s


def replica(*args: str, cwd: Path | None = None, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if k != "ELECTRIC_SECRET"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "replica", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)
    return done, time.monotonic() - started


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="module")
def electric() -> Iterator[tuple[FakeElectric, str]]:
    """The sample fake (items, 1,000 rows) and its shape URL."""
    fake = sample_fake(long_poll_timeout=0.5)
    with serve_in_thread(fake) as server:
        yield fake, server.url


def no_shape_log(url: str, answered: str) -> str:
    return (f"{url} answered {answered} without Electric's headers: is this the shape endpoint? "
            f"Electric serves shapes at {url.rstrip('/')}/v1/shape")


# --- a URL that answers, but not with a shape log ------------------------------------------------------


@pytest.mark.parametrize("once", [True, False], ids=["once", "follow"])
def test_electric_root_instead_of_the_shape_endpoint_exits_1_after_three_answers(
        electric: tuple[FakeElectric, str], tmp_path: Path, once: bool) -> None:
    fake, url = electric
    base = url.removesuffix("/v1/shape")
    before = len(fake.requests)
    done, elapsed = replica("sync", base, "--table", "items", "--db", "app.db", *(["--once"] if once else []),
                            cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert elapsed < BOUND
    message = no_shape_log(base, "200 (empty body)")
    assert f"replica: shape items stopped: {message}\n" in done.stderr
    assert "not valid JSON" not in done.stderr
    roots = [target for _, target, *_ in fake.requests[before:] if urlsplit(target).path == "/"]
    assert len(roots) == 3, "a never-synced shape stops after 3 such answers in a row"
    assert files(tmp_path) == [], "the database this run created is not left behind"


def test_an_html_page_exits_1_naming_the_shape_endpoint(tmp_path: Path) -> None:
    with serve_page() as (base, seen):
        done, elapsed = replica("sync", base + "/", "--table", "items", "--db", "app.db", "--once", cwd=tmp_path)
    assert done.returncode == 1 and elapsed < BOUND
    assert no_shape_log(base + "/", "200 text/html") in done.stderr
    assert len(seen) == 3
    assert files(tmp_path) == []


def test_a_login_page_at_the_shape_path_names_the_page_and_never_the_secret(tmp_path: Path) -> None:
    with serve_page() as (base, _):
        done, _ = replica("sync", f"{base}/v1/shape?secret=CANARY-7", "--table", "items", "--db", "app.db",
                          "--once", cwd=tmp_path)
    assert done.returncode == 1
    assert (f"{base}/v1/shape answered 200 text/html without Electric's headers (page title 'Sign in'): "
            "something other than Electric answers at this URL") in done.stderr
    assert "CANARY" not in done.stderr + done.stdout
    assert files(tmp_path) == []


def test_a_json_api_that_is_not_electric_is_not_a_shape_log(tmp_path: Path) -> None:
    with serve_page(b'[{"id": 1, "title": "a"}]', "application/json") as (base, _):
        done, _ = replica("sync", base + "/api/items", "--table", "items", "--db", "app.db", "--once", cwd=tmp_path)
    assert done.returncode == 1
    assert no_shape_log(base + "/api/items", "200 application/json") in done.stderr
    assert "stripping" not in done.stderr, "an array of something else is not a log without its headers"


def test_a_shape_that_synced_before_keeps_retrying_a_page_until_the_timeout(
        electric: tuple[FakeElectric, str], tmp_path: Path) -> None:
    fake, url = electric
    first, _ = replica("sync", url, "--table", "items", "--db", "app.db", "--once", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    with serve_page() as (base, seen):
        done, elapsed = replica("sync", base + "/v1/shape", "--table", "items", "--db", "app.db", "--once",
                                "--timeout", "4", cwd=tmp_path)
    assert done.returncode == 1 and elapsed < BOUND
    assert "stopped" not in done.stderr, "a shape with a stored position must not give up on a page"
    assert re.search(r"timed out after 4 s: items is not up to date \(offline\); last error: .*answered 200 "
                     r"text/html without Electric's headers \(page title 'Sign in'\)", done.stderr), done.stderr
    assert len(seen) >= 1
    assert local(tmp_path / "app.db", "items", ("id",)) == expected(fake, "items"), "committed rows stay"


# --- --timeout ------------------------------------------------------------------------------------------


def test_timeout_against_an_unreachable_server_exits_1_naming_the_error(tmp_path: Path) -> None:
    port = free_port()
    done, elapsed = replica("sync", f"http://127.0.0.1:{port}/v1/shape", "--table", "items", "--db", "app.db",
                            "--once", "--timeout", "2", cwd=tmp_path)
    assert done.returncode == 1
    assert 2 <= elapsed < BOUND
    assert (f"replica: error: timed out after 2 s: items is not up to date (offline); last error: cannot connect to "
            f"http://127.0.0.1:{port}/v1/shape: connection refused") in done.stderr
    assert files(tmp_path) == []


@pytest.mark.guarantee("R1")
def test_timeout_mid_snapshot_keeps_what_was_committed_and_a_rerun_resumes(tmp_path: Path) -> None:
    fake = FakeElectric(chunk_bytes=1024, long_poll_timeout=0.5)
    fake.create_table("items", {"id": {"type": "int4", "pk_index": 0, "not_null": True}, "title": {"type": "text"}},
                      rows=[{"id": str(i), "title": f"t{i}"} for i in range(1, 201)])
    fake.faults.add(Fault("stall", phase="snapshot", seconds=8, times=100))  # the snapshot's second chunk hangs
    with serve_in_thread(fake) as server:
        done, elapsed = replica("sync", server.url, "--table", "items", "--db", "app.db", "--once",
                                "--timeout", "2", cwd=tmp_path)
        assert done.returncode == 1 and elapsed < BOUND
        assert "timed out after 2 s: items is not up to date (syncing); no error, still syncing" in done.stderr
        assert "app.db" in files(tmp_path), "a database holding a staged position is kept"
        conn = apsw.Connection(str(tmp_path / "app.db"))
        staged = conn.execute('SELECT "offset" FROM "_replica_stages"').fetchall()
        conn.close()
        assert staged and staged[0][0] != "-1"
        fake.faults.clear()
        first = len(fake.requests)
        again, _ = replica("sync", server.url, "--table", "items", "--db", "app.db", "--once", "--timeout", "30",
                           cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        resumed = parse_qs(urlsplit(fake.requests[first][1]).query)
        assert resumed["offset"] == [staged[0][0]], "the rerun resumes from the committed position"
        assert local(tmp_path / "app.db", "items", ("id",)) == expected(fake, "items")


@pytest.mark.parametrize("command", ["sync", "run"])
@pytest.mark.parametrize("value", ["2", "0", "-1", "soon", "nan"])
def test_timeout_needs_once_and_a_positive_number(tmp_path: Path, command: str, value: str) -> None:
    config = tmp_path / "replica.toml"
    config.write_text('url = "http://127.0.0.1:9/v1/shape"\ndatabase = "app.db"\n[[shapes]]\ntable = "items"\n')
    target = ["http://127.0.0.1:9/v1/shape", "--table", "items", "--db", "app.db"] if command == "sync" else \
        ["-c", str(config)]
    once = [] if value == "2" else ["--once"]
    done, _ = replica(command, *target, *once, "--timeout", value, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "--timeout" in done.stderr
    assert files(tmp_path) == ["replica.toml"]


# --- what a successful --once prints --------------------------------------------------------------------


def stored_position(db: Path) -> tuple[str, str]:
    conn = apsw.Connection(str(db))
    handle, offset = conn.execute('SELECT "handle", "offset" FROM "_replica_shapes" WHERE name = ?', ("items",)).fetchone()
    conn.close()
    return handle, offset


def test_once_prints_one_summary_line_unless_quiet(electric: tuple[FakeElectric, str], tmp_path: Path) -> None:
    _, url = electric
    done, _ = replica("sync", url, "--table", "items", "--db", "app.db", "--once", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    handle, offset = stored_position(tmp_path / "app.db")
    assert re.fullmatch(rf"items: 1,000 rows, [0-9]+\.[0-9]+ s, handle {re.escape(handle)}, offset {offset}\n",
                        done.stderr), done.stderr
    quiet, _ = replica("sync", url, "--table", "items", "--db", "app.db", "--once", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""
    verbose, _ = replica("sync", url, "--table", "items", "--db", "fresh.db", "--once", "--verbose", cwd=tmp_path)
    assert "rows (" in verbose.stderr and "since the sync began)" in verbose.stderr, "--verbose unchanged"
    assert verbose.stderr.splitlines()[-1].startswith("items: 1,000 rows, ")


def test_run_once_logs_a_summary_per_shape(electric: tuple[FakeElectric, str], tmp_path: Path) -> None:
    _, url = electric
    config = tmp_path / "replica.toml"
    config.write_text(f'url = "{url}"\ndatabase = "app.db"\n[[shapes]]\ntable = "items"\n'
                      '[[shapes]]\ntable = "items"\nname = "cheap"\nwhere = "price < $1"\nparams = {1 = "10"}\n')
    done, _ = replica("run", "-c", str(config), "--once", "--timeout", "60", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"items: 1,000 rows, [0-9.]+ s, handle \S+, offset \S+$", done.stderr, re.MULTILINE)
    assert re.search(r"cheap: [1-9][0-9,]* rows, [0-9.]+ s, handle \S+, offset \S+$", done.stderr, re.MULTILINE)


def test_run_once_timeout_names_each_unfinished_shape_and_leaves_no_database(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "replica.toml"
    config.write_text(f'url = "http://127.0.0.1:{port}/v1/shape"\ndatabase = "app.db"\n'
                      '[[shapes]]\ntable = "items"\n[[shapes]]\ntable = "orders"\n')
    done, elapsed = replica("run", "-c", str(config), "--once", "--timeout", "2", cwd=tmp_path)
    assert done.returncode == 1 and elapsed < BOUND
    for name in ("items", "orders"):
        assert re.search(rf"timed out after 2 s: {name} is not up to date \(offline\); last error: cannot connect",
                         done.stderr), done.stderr
    assert files(tmp_path) == ["replica.toml"]


# --- no empty database left behind ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sync", "run"])
def test_a_signal_before_any_answer_leaves_no_database(tmp_path: Path, command: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/shape"
    (tmp_path / "replica.toml").write_text(f'url = "{url}"\ndatabase = "app.db"\n[[shapes]]\ntable = "items"\n')
    args = ["sync", url, "--table", "items", "--db", "app.db"] if command == "sync" else \
        ["run", "-c", "replica.toml", "--listen", "127.0.0.1:0"]
    with subprocess.Popen([sys.executable, "-m", "replica", *args], cwd=tmp_path, stderr=subprocess.PIPE,
                          text=True) as proc:
        deadline = time.monotonic() + BOUND
        while not (tmp_path / "app.db").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the database never appeared"
            time.sleep(0.02)
        time.sleep(0.3)  # a retry or two
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(BOUND)
        errors = proc.stderr.read() if proc.stderr else ""
    assert code == 0, errors
    assert files(tmp_path) == ["replica.toml"]


@pytest.mark.parametrize("existing", ["empty file", "app table", "bookkeeping only"])
def test_a_database_that_existed_before_the_run_always_stays(tmp_path: Path, existing: str) -> None:
    db = tmp_path / "app.db"
    if existing == "empty file":
        db.write_bytes(b"")
    elif existing == "app table":
        conn = apsw.Connection(str(db))
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes VALUES (1, 'mine')")
        conn.close()
    else:  # replica's bookkeeping and nothing else (made by a Store before): still not this run's to remove
        Store(db).close()
    done, elapsed = replica("sync", f"http://127.0.0.1:{free_port()}/v1/shape", "--table", "items", "--db", "app.db",
                            "--once", "--timeout", "1", cwd=tmp_path)
    assert done.returncode == 1 and elapsed < BOUND
    assert db.exists()
    if existing == "app table":
        conn = apsw.Connection(str(db))
        assert conn.execute("SELECT body FROM notes").fetchall() == [("mine",)]
        conn.close()


# --- the daemon shows why a shape that synced before is not ready ---------------------------------------


def test_daemon_shows_a_page_as_the_reason_in_readyz_and_status(electric: tuple[FakeElectric, str],
                                                                  tmp_path: Path) -> None:
    _, url = electric
    first, _ = replica("sync", url, "--table", "items", "--db", "app.db", "--once", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    with serve_page() as (base, _):
        config = tmp_path / "replica.toml"
        config.write_text(f'url = "{base}"\ndatabase = "{tmp_path / "app.db"}"\nlisten = "127.0.0.1:{free_port()}"\n'
                          '[[shapes]]\ntable = "items"\n')
        daemon = Daemon(config)
        try:
            expected_reason = no_shape_log(base, "200 text/html")

            def reason() -> str | None:
                status, body = daemon.readyz()
                not_ready = body["not_ready"]
                return not_ready[0]["reason"] if status == 503 and not_ready and \
                    expected_reason in not_ready[0]["reason"] else None

            daemon.wait_for(reason)
            time.sleep(3)  # well past three such answers: a shape that synced before keeps retrying
            assert daemon.proc.poll() is None
            assert expected_reason in (reason() or "")
            status, _ = replica("status", "-c", str(config), "--json", cwd=tmp_path)
            rows = json.loads(status.stdout)
            assert rows[0]["state"] == "offline" and expected_reason in rows[0]["error"]
            assert rows[0]["rows"] == 1000
        finally:
            daemon.close()
