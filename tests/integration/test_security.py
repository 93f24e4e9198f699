"""Security properties: secrets never leave the process in text, TLS is verified by default (a CA
file can be given), local endpoints bind 127.0.0.1 unless configured, and new database files are
readable by their owner only.

Secrets are canary values; every place text comes out is searched for them: CLI stderr, logging
at DEBUG (replica's, httpx's and httpcore's loggers), ``Replica.status()``, the store's status
(``_replica_shapes.error``, what ``replica status`` prints), exceptions, and the daemon's
/metrics, /readyz and ``status --json`` where it exists.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import shutil
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from oracle import expected, local, pk_of

from replica import Backoff, ConfigError, Replica, ReplicaError, Shape, connect
from replica.store.store import Store
from replica.testing import FakeElectric, Fault, serve_in_thread

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CANARY = "CANARY-s3cr3t-9f4e"
TOKEN = "CANARY-t0k3n-77aa"
COLUMNS = {"id": {"type": "int8", "pk_index": 0, "not_null": True}, "title": {"type": "text"}}


def make_fake(secret: str | None = CANARY) -> FakeElectric:
    fake = FakeElectric(long_poll_timeout=0.3, chunk_bytes=300, secret=secret)
    fake.create_table("items", COLUMNS, rows=[{"id": str(i), "title": f"t{i}"} for i in range(1, 20)])
    return fake


def stored_text(db: Path) -> str:
    conn = connect(db)
    try:
        return json.dumps(list(conn.execute('SELECT * FROM "_replica_shapes"')))
    finally:
        conn.close()


def echo_url(status: int) -> Callable[[httpx.Request], httpx.Response]:
    """A proxy that echoes the request (URL and headers) in its error page, as some do."""

    def handler(request: httpx.Request) -> httpx.Response:
        page = f"<h1>{status}</h1> upstream failed for {request.url} with {dict(request.headers)}"
        return httpx.Response(status, content=page.encode())

    return handler


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 502, 503, 418])
async def test_an_error_page_echoing_the_request_leaks_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "replica.db"
    replica = Replica(db, "http://proxy/v1/shape", Shape("items"), secret=CANARY,
                      headers={"Authorization": f"Bearer {TOKEN}"}, params={"api_secret": CANARY},
                      transport=httpx.MockTransport(echo_url(status)), backoff=Backoff(initial=0.01, cap=0.02))
    errors: list[str] = []
    with anyio.move_on_after(1.0):
        try:
            await replica.run(once=True)
        except ReplicaError as exc:
            errors.append(f"{exc!s} {exc!r}")
    seen = [s.error or "" for s in replica.status()]
    assert any(seen) or errors, "the error page was not reported at all"
    everything = caplog.text + " ".join(seen) + " ".join(errors) + (stored_text(db) if db.exists() else "")
    assert CANARY not in everything and TOKEN not in everything
    assert "[redacted]" in everything  # the rest of the page is still shown


@pytest.mark.anyio
async def test_retries_and_faults_at_debug_level_leak_no_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = make_fake()
    for fault in (Fault("status", status=503, times=2), Fault("malformed"), Fault("drop_headers"), Fault("reset"),
                  Fault("must_refetch", handle=False), Fault("truncate")):
        fake.faults.add(fault)
    db = tmp_path / "replica.db"
    with serve_in_thread(fake) as server:
        url = f"{server.url}?secret={CANARY}"  # a secret written into the URL is a secret too
        replica = Replica(db, url, Shape("items"), headers={"Authorization": f"Bearer {TOKEN}"},
                          backoff=Backoff(initial=0.01, cap=0.02), request_timeout=2)
        with anyio.fail_after(15):
            await replica.run(once=True)
    assert len(fake.faults.fired) >= 6
    assert local(db, "items", pk_of(fake, "items")) == expected(fake, "items")
    assert "retry" in caplog.text  # the retries were logged...
    assert CANARY not in caplog.text and TOKEN not in caplog.text  # ...without the secrets
    assert CANARY not in stored_text(db)


def test_a_wrong_secret_is_not_shown_by_the_cli_nor_stored(tmp_path: Path) -> None:
    fake = make_fake(secret="right")
    db = tmp_path / "replica.db"
    with serve_in_thread(fake) as server:
        done = subprocess.run(
            [sys.executable, "-m", "replica", "sync", f"{server.url}?api_secret={TOKEN}", "--table", "items",
             "--db", str(db), "--header", f"Authorization: Bearer {TOKEN}", "--once", "--verbose"],
            cwd=ROOT, capture_output=True, text=True, timeout=30, env={**os.environ, "ELECTRIC_SECRET": CANARY},
        )
    assert done.returncode == 1 and "401" in done.stderr
    assert CANARY not in done.stderr + done.stdout and TOKEN not in done.stderr + done.stdout


def test_a_bad_url_is_refused_without_echoing_its_secret() -> None:
    with pytest.raises(ConfigError) as raised:
        Replica("x.db", f"htp://h/v1/shape?secret={CANARY}", Shape("items"))
    assert CANARY not in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        Replica("x.db", f"ftp://user:{CANARY}@h/v1/shape", Shape("items"))
    assert CANARY not in str(raised.value)


def test_the_daemon_endpoints_and_status_leak_no_secret(tmp_path: Path) -> None:
    pytest.importorskip("replica.cli.daemon")
    fake = make_fake()
    fake.faults.add(Fault("status", status=503, times=3))
    db = tmp_path / "replica.db"
    secret_file = tmp_path / "secret"
    secret_file.write_text(CANARY + "\n")
    with serve_in_thread(fake) as server:
        config = tmp_path / "replica.toml"
        config.write_text(
            f'url = "{server.url}"\ndatabase = "{db}"\nlisten = "127.0.0.1:0"\n'
            f'secret = {{ file = "{secret_file}" }}\n'
            f'[headers]\nAuthorization = "Bearer {TOKEN}"\n'
            '[[shapes]]\ntable = "items"\n'
        )
        done = subprocess.run([sys.executable, "-m", "replica", "run", "-c", str(config), "--once", "--verbose"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        status = subprocess.run([sys.executable, "-m", "replica", "status", "--db", str(db), "--json"],
                                cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    for text in (done.stderr, done.stdout, status.stdout, status.stderr, stored_text(db)):
        assert CANARY not in text and TOKEN not in text


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@contextmanager
def https_electric(cert: Path, key: Path) -> Iterator[str]:
    """A tiny Electric over HTTPS on 127.0.0.1: one row, then quiet long-polls."""
    schema = json.dumps(COLUMNS)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
            headers = {"electric-handle": "h1", "electric-schema": schema}
            if query.get("offset") == "-1":
                body = [{"key": '"public"."items"/"1"', "value": {"id": "1", "title": "over tls"},
                         "headers": {"operation": "insert"}}]
                headers["electric-offset"] = "0_0"
            else:
                time.sleep(0.05)
                body = [{"headers": {"control": "up-to-date"}}]
                headers.update({"electric-offset": "0_inf", "electric-up-to-date": "", "electric-cursor": "1"})
            data = json.dumps(body).encode()
            self.send_response(200)
            for name, value in {**headers, "content-length": str(len(data))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def setup(self) -> None:
            # The handshake happens here, in the connection's own thread and with a timeout, never in
            # accept(): a client that rejects our certificate must not stall the accept loop (or shutdown).
            self.request.settimeout(5)
            self.request.do_handshake()
            super().setup()

        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # refused handshakes are the point of one test

    server = Server(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/v1/shape"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_tls_is_verified_by_default_and_a_ca_file_makes_a_private_ca_work(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    with https_electric(cert, key) as url:
        refused = Replica(tmp_path / "refused.db", url, Shape("items"), backoff=Backoff(initial=0.01, cap=0.02))
        refused.start()
        try:
            deadline = time.monotonic() + 10
            while "CERTIFICATE_VERIFY_FAILED" not in (refused.status()[0].error or ""):
                assert time.monotonic() < deadline, f"no verification error: {refused.status()}"
                time.sleep(0.02)
            assert not refused.wait_until_synced(0.2)
        finally:
            refused.stop()
        assert not local(tmp_path / "refused.db", "items", ["id"])

        trusted = Replica(tmp_path / "trusted.db", url, Shape("items"), verify=str(cert))
        anyio.run(_run_once, trusted)
    assert local(tmp_path / "trusted.db", "items", ["id"]) == {(1,): {"id": 1, "title": "over tls"}}


def test_default_verification_loads_its_roots_at_the_first_handshake(
    tmp_path: Path, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default context defers loading roots (plain-HTTP syncs never need them). Where they come
    # from follows httpx: SSL_CERT_FILE, read at the handshake (the refusal above shows certifi's).
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with https_electric(cert, key) as url:
        anyio.run(_run_once, Replica(tmp_path / "env.db", url, Shape("items")))
    assert local(tmp_path / "env.db", "items", ["id"]) == {(1,): {"id": 1, "title": "over tls"}}


def test_the_cli_and_the_config_take_a_ca_file_and_name_a_missing_one(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "replica", *args], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)

    with https_electric(cert, key) as url:
        synced = cli("sync", url, "--table", "items", "--db", "cli.db", "--once", "--ca-file", str(cert))
        missing = cli("sync", url, "--table", "items", "--db", "none.db", "--once", "--ca-file", "nope.pem")
        (tmp_path / "ca.pem").write_bytes(cert.read_bytes())
        config = tmp_path / "replica.toml"
        config.write_text(f'url = "{url}"\ndatabase = "daemon.db"\nca_file = "ca.pem"\n[[shapes]]\ntable = "items"\n')
        daemon = cli("run", "-c", str(config), "--once")
        config.write_text(config.read_text().replace('"ca.pem"', '"gone.pem"'))
        refused = cli("run", "-c", str(config), "--once")
    assert synced.returncode == 0, synced.stderr
    assert local(tmp_path / "cli.db", "items", ["id"]) == {(1,): {"id": 1, "title": "over tls"}}
    assert missing.returncode == 2 and "--ca-file" in missing.stderr and not (tmp_path / "none.db").exists()
    assert daemon.returncode == 0, daemon.stderr
    assert local(tmp_path / "daemon.db", "items", ["id"]) == {(1,): {"id": 1, "title": "over tls"}}
    assert refused.returncode == 2 and "ca_file" in refused.stderr


def test_an_unreadable_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load the CA bundle"):
        anyio.run(_run_once, Replica(tmp_path / "x.db", "https://127.0.0.1:9/v1/shape", Shape("items"),
                                     verify=str(bad)))
    assert not (tmp_path / "x.db").exists()  # refused before the database was touched


async def _run_once(replica: Replica) -> None:
    with anyio.fail_after(10):
        await replica.run(once=True)


# --- where things listen -------------------------------------------------------------------------


def test_local_endpoints_bind_loopback_unless_configured(tmp_path: Path) -> None:
    with serve_in_thread(make_fake(None)) as server:
        assert server.host == "127.0.0.1"
    helps = subprocess.run([sys.executable, "-m", "replica.testing", "serve", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30).stdout
    assert "127.0.0.1" in helps
    config_module = pytest.importorskip("replica.cli.config")
    assert config_module.DEFAULT_HOST == "127.0.0.1"
    assert config_module.parse_listen(":9000") == ("127.0.0.1", 9000)
    config = tmp_path / "replica.toml"
    config.write_text(f'url = "http://x/v1/shape"\ndatabase = "{tmp_path / "db"}"\n[[shapes]]\ntable = "items"\n')
    assert config_module.load_config(config).listen[0] == "127.0.0.1"


# --- file permissions -----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_new_database_files_are_readable_by_the_owner_only(tmp_path: Path, umask: int) -> None:
    db = tmp_path / "replica.db"
    previous = os.umask(umask)
    try:
        fake = make_fake(None)
        replica = Replica(db, "http://fake/v1/shape", Shape("items"), transport=httpx.MockTransport(fake.handler))
        replica.start()
        try:
            assert replica.wait_until_synced(10)
            for suffix in ("", "-wal", "-shm", "-replica-lock"):
                path = Path(f"{db}{suffix}")
                assert path.exists(), suffix
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path.name}: {oct(path.stat().st_mode)}"
        finally:
            replica.stop()
    finally:
        os.umask(previous)


def test_an_existing_database_keeps_its_owners_mode(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    with Store(db):
        pass
    db.chmod(0o640)  # the owner chose to share it with a group
    with Store(db):
        assert stat.S_IMODE(db.stat().st_mode) == 0o640


@pytest.mark.anyio
async def test_query_parameters_written_in_the_url_are_sent(tmp_path: Path) -> None:
    # e.g. Electric Cloud: …/v1/shape?source_id=…&secret=… (httpx would drop them for params=)
    fake = make_fake()
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return await fake.handler(request)

    replica = Replica(tmp_path / "replica.db", f"http://fake/v1/shape?source_id=src-1&secret={CANARY}",
                      Shape("items"), transport=httpx.MockTransport(handler))
    with anyio.fail_after(10):
        await replica.run(once=True)
    assert seen and all("source_id=src-1" in url and f"secret={CANARY}" in url for url in seen)
