"""nginx as a caching proxy in front of a shape origin, run unprivileged from a temp dir.

    with CachingProxy("127.0.0.1:3000") as proxy:
        proxy.url            # http://127.0.0.1:PORT/v1/shape, the fleet's URL
        proxy.restart()      # kill -9 and start again on the same port, the cache on disk kept
        proxy.log()          # the access log: one AccessLine per request answered

The config is ``nginx.conf`` beside this file (a comment per directive). nginx gets its own prefix
(``-p``), config, pid, logs and cache in the temp dir, and listens on 127.0.0.1 at a port found free
by binding port 0 first. Run as root (CI containers), nginx itself is started as ``nobody``: the
temp dir is handed to that user, so neither master nor worker is privileged.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["AccessLine", "CachingProxy", "NginxMissing", "free_port", "nginx_binary"]

CONFIG = Path(__file__).resolve().parent / "nginx.conf"
_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")


class NginxMissing(RuntimeError):
    """nginx is not installed; the message says how to get it."""


def nginx_binary() -> str | None:
    """The nginx executable, or None."""
    found = shutil.which("nginx")
    if found:
        return found
    for folder in _SEARCH:
        candidate = Path(folder) / "nginx"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for port 0): nginx binds it next."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class AccessLine:
    """One request nginx answered. ``origin``: the origin was asked (a miss, an expired entry, a
    background refresh); ``cache``: $upstream_cache_status (HIT, MISS, EXPIRED, STALE, UPDATING,
    REVALIDATED, BYPASS, or "-")."""

    at: float
    status: int
    cache: str
    origin: bool
    seconds: float
    uri: str


class CachingProxy:
    """nginx in front of ``origin`` (``host:port``) until ``close``; see the module docstring."""

    def __init__(self, origin: str, *, port: int | None = None, startup_timeout: float = 10.0) -> None:
        binary = nginx_binary()
        if binary is None:
            raise NginxMissing("nginx is not installed (Debian: apt-get install -y nginx)")
        self.binary = binary
        self.origin = origin
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.prefix = Path(tempfile.mkdtemp(prefix="replica-nginx-"))
        self._user = _unprivileged_user()
        config = CONFIG.read_text()
        for name, value in (("PREFIX", str(self.prefix)), ("ORIGIN", origin), ("PORT", str(self.port))):
            config = config.replace(f"@{name}@", value)
        (self.prefix / "nginx.conf").write_text(config)
        if self._user is not None:
            os.chown(self.prefix, self._user.pw_uid, self._user.pw_gid)
            os.chown(self.prefix / "nginx.conf", self._user.pw_uid, self._user.pw_gid)
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/shape"

    def start(self) -> None:
        """Start nginx and wait until it accepts connections."""
        assert self._proc is None or self._proc.poll() is not None, "nginx is running"
        command = [self.binary, "-e", "stderr", "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")]
        kwargs = {} if self._user is None else {"user": self._user.pw_uid, "group": self._user.pw_gid,
                                                "extra_groups": []}
        with open(self.prefix / "stderr.log", "ab") as stderr:  # the child keeps its own copy
            self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                          **kwargs)  # type: ignore[arg-type]
        self.starts += 1
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self._proc.returncode}: {self.errors()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"nginx did not listen on 127.0.0.1:{self.port}: {self.errors()}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """kill -9 the master and its worker (its process group): no graceful hand-over."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc.wait(10)
        # The pid file is stale now; nginx would refuse nothing, but keep the dir honest.
        (self.prefix / "nginx.pid").unlink(missing_ok=True)

    def restart(self) -> float:
        """Kill and start again on the same port with the same cache; the seconds it was down."""
        started = time.monotonic()
        self.kill()
        self.start()
        return time.monotonic() - started

    def clear_cache(self) -> None:
        """Forget every cached answer (nginx must be stopped: its index lives in shared memory)."""
        assert self._proc is None or self._proc.poll() is not None, "stop nginx first"
        shutil.rmtree(self.prefix / "cache", ignore_errors=True)

    def log(self) -> list[AccessLine]:
        """Every request answered so far (the access log, parsed)."""
        path = self.prefix / "access.log"
        if not path.exists():
            return []
        lines = []
        for raw in path.read_text(errors="replace").splitlines():
            # "|"-separated: $upstream_addr lists every origin tried ("a, b") when one failed.
            at, status, cache, upstream, seconds, uri = raw.split("|", 5)
            lines.append(AccessLine(float(at), int(status), cache, upstream != "-", float(seconds.split(",")[0]), uri))
        return lines

    def errors(self) -> str:
        """nginx's own complaints (startup and error log), for failure messages."""
        text = ""
        for name in ("stderr.log", "error.log"):
            path = self.prefix / name
            if path.exists():
                text += path.read_text(errors="replace")
        return text[-4000:]

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> CachingProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _unprivileged_user() -> pwd.struct_passwd | None:
    """``nobody`` when we are root (nginx must not run privileged), else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("nobody")
