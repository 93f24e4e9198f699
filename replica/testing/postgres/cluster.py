"""A throwaway Postgres cluster from the installed binaries, for tests, benchmarks and the demo.

    with PgCluster.start() as cluster:          # initdb + pg_ctl start on a free loopback port
        cluster.create_database("app")          # → a DSN for psycopg
    # stopped and deleted here

The cluster lives in a temporary directory (data, log and unix socket), listens on 127.0.0.1
only, trusts every local connection, and runs with ``wal_level=logical`` so the Postgres dev
server can decode changes. fsync is off (the data is thrown away anyway), but commits stay
synchronous: logical decoding only reads flushed WAL, so an asynchronous commit would reach the
change stream only at the WAL writer's next flush (up to 200 ms later). Postgres refuses to run as root, so when we are root the binaries run as
the ``postgres`` OS user (``runuser``) and the directory is handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PgCluster", "PgClusterError", "find_postgres_bin"]

_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_connections": "100",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


class PgClusterError(RuntimeError):
    """The cluster could not be created or started; the message carries the tool's output."""


def find_postgres_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: $PATH first, then Debian's layout."""
    found = shutil.which("initdb")
    candidates = [Path(found).parent] if found else []
    # Debian/Ubuntu keep versioned binaries out of $PATH; prefer the newest version.
    candidates += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")), reverse=True)
    for directory in candidates:
        if all((directory / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgCluster:
    """A running cluster: ``port`` on 127.0.0.1, superuser ``postgres``, trust authentication."""

    root: Path
    port: int
    bindir: Path
    run_as: str | None  # the OS user the server runs as, when we had to switch

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    @classmethod
    def start(cls, bindir: Path | None = None, *, attempts: int = 3) -> PgCluster:
        """initdb and start a new cluster; raises PgClusterError (also when no binaries exist)."""
        bindir = bindir or find_postgres_bin()
        if bindir is None:
            raise PgClusterError("no Postgres binaries (initdb, pg_ctl, postgres) on PATH or in /usr/lib/postgresql")
        run_as = "postgres" if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="replica-pg-"))
        cluster = cls(root, 0, bindir, run_as)
        try:
            if run_as is not None:
                user = pwd.getpwnam(run_as)
                os.chown(root, user.pw_uid, user.pw_gid)
            cluster._run("initdb", "-D", str(cluster.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                         "--locale=C", "--no-sync")
            for attempt in range(attempts):
                # Another process may take the port between our probe and the bind; pick again.
                cluster.port = _free_port()
                settings = {**_SETTINGS, "port": str(cluster.port), "unix_socket_directories": f"'{root}'"}
                with (cluster.data / "postgresql.auto.conf").open("a") as conf:
                    conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
                try:
                    cluster._run("pg_ctl", "-D", str(cluster.data), "-l", str(cluster.log_file), "-w", "-t", "60",
                                 "start")
                    return cluster
                except PgClusterError:
                    if attempt == attempts - 1:
                        raise
        except BaseException:
            cluster._remove()
            raise
        raise AssertionError("unreachable")

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` (a plain identifier) and return its DSN."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database names here are plain identifiers, got {name!r}")
        import psycopg  # the dev/test extra; only needed from here on

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]  # checked above
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        finally:
            self._remove()

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.run_as is not None:
            command = [_runuser(), "-u", self.run_as, "--", *command]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root, timeout=120)
        if done.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise PgClusterError(
                f"{tool} failed (exit {done.returncode}, {time.monotonic() - started:.1f} s): "
                f"{done.stderr.strip() or done.stdout.strip()}\n{log}"
            )

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _runuser() -> str:
    """runuser lives in /usr/sbin or /sbin, which a minimal PATH (cron, CI, env -i) may lack."""
    for candidate in (shutil.which("runuser"), "/usr/sbin/runuser", "/sbin/runuser"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise PgClusterError("runuser not found: it is needed to start Postgres as the postgres user when running as root")
