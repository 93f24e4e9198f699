"""`replica run` as a subprocess against the loopback fake: endpoints, metrics, status, reset,
signals, systemd notification, config errors and credentials re-read after a 401."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from daemonproc import Daemon, free_port
from oracle import expected, local

from replica import connect
from replica.testing import FakeElectric, FakeResponse, Fault, serve_in_thread

pytestmark = pytest.mark.integration

COLUMNS = {
    "id": {"type": "int4", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "status": {"type": "text"},
}


def make_fake(rows: int = 200, **options: Any) -> FakeElectric:
    fake = FakeElectric(**{"chunk_bytes": 4096, "long_poll_timeout": 0.5, **options})
    fake.create_table("items", COLUMNS, rows=[
        {"id": str(i), "title": f"t{i}", "status": "open" if i % 2 else "done"} for i in range(1, rows + 1)
    ])
    return fake


@pytest.fixture
def fake() -> FakeElectric:
    return make_fake()


@pytest.fixture
def url(fake: FakeElectric) -> Iterator[str]:
    with serve_in_thread(fake) as server:
        yield server.url


def write_config(path: Path, url: str, extra: str = "", shapes: str = '[[shapes]]\ntable = "items"\n') -> Path:
    path.write_text(f'url = "{url}"\ndatabase = "app.db"\n{extra}\n{shapes}')
    return path


def replica(*args: str, env: Mapping[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "replica", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def start() -> Iterator[Callable[..., Daemon]]:
    daemons: list[Daemon] = []

    def start(config: Path, *args: str, env: Mapping[str, str] | None = None) -> Daemon:
        daemons.append(Daemon(config, *args, env=env))
        return daemons[-1]

    yield start
    for daemon in daemons:
        daemon.close()


def test_readiness_metrics_status_and_reset_while_running(
    fake: FakeElectric, url: str, tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    shapes = '[[shapes]]\ntable = "items"\n[[shapes]]\ntable = "items"\nname = "open"\nwhere = "status = $1"\n' \
             'params = { 1 = "open" }\n'
    # the endpoint named in the config, so that `status -c` finds the daemon and shows its live state
    config = write_config(tmp_path / "replica.toml", url, extra=f'listen = "127.0.0.1:{free_port()}"', shapes=shapes)
    daemon = start(config)
    assert daemon.get("/healthz")[0] == 200
    daemon.wait_for(lambda: daemon.readyz()[0] == 200)
    assert daemon.readyz()[1]["not_ready"] == []
    assert daemon.metric("replica_rows_applied_total", shape="items", operation="insert") == 200
    assert daemon.metric("replica_rows_applied_total", shape="open", operation="insert") == 100
    assert daemon.metric("replica_received_bytes_total", shape="items") > 0
    assert daemon.metric("replica_database_bytes") > 0
    commits = daemon.metric("replica_commits_total", shape="items")

    fake.insert("items", {"id": "1000", "title": "new", "status": "open"})
    fake.update("items", {"id": "1", "title": "changed"})
    daemon.wait_for(lambda: daemon.metric("replica_rows_applied_total", shape="items", operation="update") == 1)
    assert daemon.metric("replica_rows_applied_total", shape="items", operation="insert") == 201
    assert daemon.metric("replica_commits_total", shape="items") > commits
    assert daemon.metric("replica_http_requests_total", shape="items", status="200") > 0
    assert daemon.metric("replica_seconds_since_up_to_date", shape="items") < 60
    db = tmp_path / "app.db"
    daemon.wait_for(lambda: local(db, "open", ("id",)) == expected(fake, "items", where="status = $1",
                                                                     params={"1": "open"}))

    # status --json, read-only while the daemon writes, agrees with the database
    for target in (["-c", str(config)], ["--db", str(db)]):
        done = replica("status", *target, "--json")
        assert done.returncode == 0, done.stderr
        by_name = {row["name"]: row for row in json.loads(done.stdout)}
        conn = connect(db)
        try:
            stored = conn.execute('SELECT "name", "handle", "offset", "rows" FROM "_replica_shapes"').fetchall()
            counts = {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in by_name}
        finally:
            conn.close()
        assert {n: (h, o, r) for n, h, o, r in stored} == {
            n: (row["handle"], row["offset"], row["rows"]) for n, row in by_name.items()}
        assert {n: row["rows"] for n, row in by_name.items()} == counts
        assert all(row["error"] is None and row["last_synced_at"] for row in by_name.values())
        assert {row["state"] for row in by_name.values()} <= ({"live"} if target[0] == "-c" else {"running"})
        assert all(0 <= row["lag"] < 60 for row in by_name.values())
        assert all(row["depends_on"] == [] for row in by_name.values())  # no subquery: nothing moves rows

    # reset needs the writer: it refuses while the daemon runs, and says what to do
    refused = replica("reset", "items", "--db", str(db))
    assert refused.returncode == 1 and "stop it" in refused.stderr

    # one shape refused by the server: readiness drops to 503, naming it and why
    fake.faults.add(Fault("status", status=400, phase="live"))
    daemon.wait_for(lambda: daemon.readyz()[0] == 503)
    body = daemon.readyz()[1]
    assert len(body["not_ready"]) == 1 and body["not_ready"][0]["state"] == "error"
    assert "400" in body["not_ready"][0]["reason"]
    assert daemon.metric("replica_shape_state", shape=body["not_ready"][0]["name"], state="error") == 1
    assert daemon.metric("replica_ready") == 0
    assert daemon.get("/healthz")[0] == 200  # still running: the other shape syncs on (R7)
    code, _ = daemon.stop()
    assert code == 0, daemon.log


def test_once_then_reset_resyncs_and_keeps_rows_until_then(fake: FakeElectric, url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "replica.toml", url)
    db = tmp_path / "app.db"
    first = replica("run", "-c", str(config), "--once")
    assert first.returncode == 0, first.stderr
    assert local(db, "items", ("id",)) == expected(fake, "items")

    done = replica("reset", "items", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert "200 rows" in done.stdout
    assert len(local(db, "items", ("id",))) == 200  # still visible
    status = json.loads(replica("status", "--db", str(db), "--json").stdout)
    assert status[0]["handle"] is None and status[0]["offset"] is None and status[0]["state"] == "stopped"

    fake.delete("items", {"id": "2"})
    before = len(fake.requests)
    again = replica("run", "-c", str(config), "--once")
    assert again.returncode == 0, again.stderr
    assert "offset=-1" in fake.requests[before][1], "reset did not resync from scratch"
    assert local(db, "items", ("id",)) == expected(fake, "items")

    unknown = replica("reset", "nope", "--db", str(db))
    assert unknown.returncode == 1 and "items" in unknown.stderr


@pytest.mark.guarantee("R6")
def test_sigterm_mid_long_poll_exits_0_within_2s_and_notifies_systemd(
    fake: FakeElectric, url: str, tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(10)
        daemon = start(write_config(tmp_path / "replica.toml", url), env={"NOTIFY_SOCKET": str(notify_path)})
        assert notify.recv(4096).startswith(b"READY=1")
        assert daemon.readyz()[0] == 200
        fake.long_poll_timeout = 30.0  # the long-poll held now (or the next one) lasts past the test
        daemon.wait_for(lambda: "live=true" in fake.requests[-1][1])
        time.sleep(0.2)
        code, elapsed = daemon.stop(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
    assert code == 0, daemon.log
    assert elapsed < 2.0
    assert "stopped" in daemon.log


@pytest.mark.guarantee("R6")
def test_sigterm_mid_initial_sync_exits_0_within_2s_and_resumes(tmp_path: Path, start: Callable[..., Daemon]) -> None:
    fake = make_fake(rows=40_000, chunk_bytes=16 * 1024)
    with serve_in_thread(fake) as server:
        config = write_config(tmp_path / "replica.toml", server.url, extra="progress_interval = 0.2")
        daemon = start(config)
        daemon.wait_for(lambda: re.search(r"initial sync: items [1-9]", daemon.log))  # rows staged on disk
        assert daemon.readyz()[0] == 503
        assert "initial sync not finished" in daemon.readyz()[1]["not_ready"][0]["reason"]
        code, elapsed = daemon.stop(signal.SIGINT)
        assert code == 0, daemon.log
        assert elapsed < 2.0
        assert re.search(r"initial sync: items [\d,]+ rows [\d.]+ [kM]?B [\d,]+ rows/s", daemon.log)
        assert local(tmp_path / "app.db", "items", ("id",)) == {}  # nothing half-published (R2)
        before = len(fake.requests)
        done = replica("run", "-c", str(config), "--once")
        assert done.returncode == 0, done.stderr
        assert "offset=-1" not in fake.requests[before][1], "did not resume mid-snapshot"
        assert local(tmp_path / "app.db", "items", ("id",)) == expected(fake, "items")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('database = "a.db"\n[[shapes]]\ntable = "items"\n', "url"),
        ('url = "URL"\ndatabase = "a.db"\n[[shapes]]\ntable = "items"\nwher = "x"\n', "shapes[0].wher"),
        ('url = "URL"\ndatabase = "a.db"\nlisten = "nowhere"\n[[shapes]]\ntable = "items"\n', "listen"),
        ('url = "URL"\ndatabase = "a.db"\n[[shapes]]\ntable = "items"\ncolumns = "id"\n', "shapes[0].columns"),
        ('url = "URL"\ndatabase = "a.db"\nsecret = "${UNSET_FOR_TEST}"\n[[shapes]]\ntable = "items"\n', "secret"),
        ('url = "URL"\ndatabase = "a.db"\nheaders = { A = { file = "missing" } }\n[[shapes]]\ntable = "i"\n',
         "headers.A"),
        ('url = "URL"\ndatabase = "a.db"\n[[shapes]]\ntable = "a.b.c"\n', "shapes[0].table"),
        ('url = "URL"\n[[shapes]\n', "not valid TOML"),
    ],
)
def test_bad_config_exits_2_naming_the_field(fake: FakeElectric, url: str, tmp_path: Path, text: str,
                                             field: str) -> None:
    config = tmp_path / "replica.toml"
    config.write_text(text.replace("URL", url))
    done = replica("run", "-c", str(config))
    assert done.returncode == 2, done.stderr
    assert field in done.stderr
    assert fake.requests == [] and not (tmp_path / "a.db").exists()


class AuthFake(FakeElectric):
    """FakeElectric behind a bearer-token check, like an auth proxy in front of Electric."""

    token = "canary-token-one"

    async def exchange(self, method: str, target: str, headers: Mapping[str, str] | None = None, *,
                       on_wire: bool = False) -> tuple[FakeResponse, Fault | None]:
        given = (headers or {}).get("authorization", "")
        if given != f"Bearer {self.token}":
            # Echo the rejected token, as careless proxies do: it must still never reach a log.
            body = json.dumps({"message": f"expired token: {given}"}).encode()
            return FakeResponse(401, {"content-type": "application/json"}, body), None
        return await super().exchange(method, target, headers, on_wire=on_wire)


def test_expired_token_is_read_again_from_its_file_and_never_shown(tmp_path: Path, start: Callable[..., Daemon]
                                                                    ) -> None:
    fake = AuthFake(long_poll_timeout=0.5, secret="canary-secret-param")
    fake.create_table("items", COLUMNS, rows=[{"id": "1", "title": "a", "status": "open"}])
    token_file = tmp_path / "token"
    token_file.write_text("canary-token-one\n")
    with serve_in_thread(fake) as server:
        extra = ('secret = "${ELECTRIC_TEST_SECRET}"\n'
                 f'headers = {{ Authorization = {{ file = "{token_file}", prefix = "Bearer " }} }}\n')
        config = write_config(tmp_path / "replica.toml", server.url, extra=extra)
        daemon = start(config, "--verbose", "--log-format", "json",
                       env={"ELECTRIC_TEST_SECRET": "canary-secret-param"})
        daemon.wait_for(lambda: daemon.readyz()[0] == 200)

        token_file.write_text("canary-token-two\n")  # the token is rotated: the old one now gets 401
        fake.token = "canary-token-two"
        # The long-poll in flight was accepted with the old token; the next request gets the 401.
        daemon.wait_for(lambda: daemon.metric("replica_http_requests_total", shape="items", status="401") >= 1)
        fake.insert("items", {"id": "2", "title": "b", "status": "open"})
        daemon.wait_for(lambda: daemon.metric("replica_rows_applied_total", shape="items", operation="insert") == 2)
        daemon.wait_for(lambda: daemon.readyz()[0] == 200)  # the commit is counted just before "live" is set
        shown = [daemon.get("/readyz")[1].decode(), daemon.get("/metrics")[1].decode(),
                 replica("status", "-c", str(config), env={"ELECTRIC_TEST_SECRET": "x"}).stdout]
        code, _ = daemon.stop()

        # a refused literal token: the error (which echoes it) is logged, redacted
        extra = 'secret = "canary-secret-param"\nheaders = { Authorization = "Bearer canary-old" }'
        literal = write_config(tmp_path / "literal.toml", server.url, extra=extra)
        refused = replica("run", "-c", str(literal), "--once", "--verbose")
    assert refused.returncode == 1 and "401" in refused.stderr and "[redacted]" in refused.stderr
    assert "canary" not in refused.stderr + refused.stdout
    assert code == 0
    assert all(json.loads(line)["level"] for line in daemon.lines)  # every line is JSON
    assert "headers.Authorization: read a new value after HTTP 401" in daemon.log
    assert "canary" not in daemon.log + "".join(shown)
