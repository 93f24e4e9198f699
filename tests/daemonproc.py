"""`replica run` as a background subprocess for tests: its stderr collected, its endpoint read."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class Daemon:
    """`replica run` in the background, its stderr collected, its endpoint at ``self.base``."""

    def __init__(self, config: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.lines: list[str] = []
        if "listen =" not in config.read_text():
            args = ("--listen", "127.0.0.1:0", *args)  # any free port; the log line says which
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "replica", "run", "-c", str(config), *args],
            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        port = self.wait_for(lambda: next((m.group(1) for line in self.lines
                                           if (m := re.search(r"on http://127\.0\.0\.1:(\d+)", line))), None))
        self.base = f"http://127.0.0.1:{port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, check: Callable[[], Any], timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            assert self.proc.poll() is None, f"the daemon exited with {self.proc.returncode}:\n{self.log}"
            assert time.monotonic() < deadline, f"timed out; log:\n{self.log}"
            time.sleep(0.05)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/readyz")
        return status, json.loads(body)

    def metric(self, name: str, **labels: str) -> float:
        text = self.get("/metrics")[1].decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] == name and _labels(series) == wanted:
                return float(value)
        return 0.0

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(10)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _labels(series: str) -> str:
    inside = series.partition("{")[2].rstrip("}")
    return ",".join(sorted(part for part in inside.split(",") if part))
