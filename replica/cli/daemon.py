"""``replica run``: the sidecar daemon around a Replica.

It adds what operating one needs: /healthz, /readyz and /metrics on a loopback port, signals
(the first SIGTERM/SIGINT stops cleanly, a second exits at once), systemd notification
(READY=1 after the first full sync, STOPPING=1), credentials re-read from their file or command
after a 401/403, progress during the initial sync, and redacted, rate-limited logs.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anyio
import anyio.to_thread

from replica.cli.config import Config, Source
from replica.cli.endpoint import Endpoint, url_host
from replica.cli.exits import EXIT_FATAL, EXIT_OK, EXIT_USAGE
from replica.cli.logs import FailureLog, Progress, setup_logging
from replica.cli.metrics import Metrics
from replica.cli.once import OnceWatch, discarding
from replica.errors import ConfigError, ReplicaError, ShapeError
from replica.redaction import Redactor, is_sensitive
from replica.status import ShapeStatus
from replica.sync import Replica, SyncEvent
from replica.sync.http import SHAPE_CONNECTIONS
from replica.sync.upload import HttpUpload

__all__ = ["Daemon", "notify_systemd", "run_daemon"]

log = logging.getLogger("replica.daemon")

TTY_REFRESH = 0.5  # seconds between redraws of the progress line
REFRESH_DEBOUNCE = 1.0  # shapes hitting 401 together re-read the credentials once


def run_daemon(
    config: Config, *, listen: tuple[str, int] | None = None, once: bool = False, timeout: float | None = None
) -> int:
    """Run until signalled (or, with ``once``, until every shape is up to date, or ``timeout``
    seconds have passed: exit 1). Returns the exit code. A database this run created is removed
    again if nothing was committed to it."""
    redact = Redactor()
    tty = sys.stderr.isatty() and config.log_format == "text"
    setup_logging(redact, fmt=config.log_format, level=config.log_level, tty=tty)
    try:
        daemon = Daemon(config, redact, tty=tty)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    _check_open_files(len(config.shapes))
    server = None
    if not once or listen is not None:  # --once is for scripts and init containers: no port unless asked
        host, port = listen or config.listen
        try:
            server = Endpoint((host, port), daemon)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s; choose another with --listen or `listen =`",
                      host, port, exc.strerror)
            return EXIT_FATAL
        bound = server.server_address
        log.info("serving /healthz /readyz /metrics /txid on http://%s:%d", url_host(str(bound[0])), bound[1])
        threading.Thread(target=server.serve_forever, name="replica-http", daemon=True).start()
    try:
        with discarding(config.database):
            return anyio.run(daemon.main, once, timeout)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


#: Descriptors a daemon holds besides its shapes' sockets: the database and its WAL and shared
#: memory, the endpoint, the event loop, standard streams, the writer's threads (11 measured).
OWN_FILES = 32


def _check_open_files(shapes: int) -> None:
    """Warn when the open-files limit (already raised to the hard one) is below what the shapes may hold."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    most = shapes * SHAPE_CONNECTIONS + OWN_FILES  # every shape's loop and a group's catch-up at once
    if soft != resource.RLIM_INFINITY and soft < most:
        log.warning("open files: the limit is %d, and %d shapes may hold up to %d descriptors (%d when idle); "
                    "raise the hard limit (ulimit -Hn, or LimitNOFILE= in a systemd unit)",
                    soft, shapes, most, shapes + OWN_FILES)


class Daemon:
    """One Replica plus the state the endpoint, the logs and the progress display read."""

    def __init__(self, config: Config, redact: Redactor, *, tty: bool = False) -> None:
        self.config = config
        self.redact = redact
        self.tty = tty
        redact.add(config.secret.literal if config.secret else None)
        for source in config.sources():
            self._remember(source)  # reads file/command sources now: a missing token file is a config error
        names = tuple(shape.local_name for shape in config.shapes)
        self.progress = Progress(names)
        self.failures = FailureLog()
        self.watch = OnceWatch()
        self.stopping = False
        self._refreshed = -REFRESH_DEBOUNCE
        self._refresh_lock = threading.Lock()
        secret = config.secret
        self.replica = Replica(
            config.database,
            config.url,
            config.shapes,
            secret=secret.literal if secret is not None and not secret.dynamic else None,
            params={"secret": secret.value} if secret is not None and secret.dynamic else None,
            headers={name: (source.literal if not source.dynamic else source.value)  # type: ignore[misc]
                     for name, source in config.headers.items()},
            on_unauthorized=self._unauthorized if any(s.dynamic for s in config.sources()) else None,
            observer=self._observe,
            verify=str(config.ca_file) if config.ca_file is not None else True,
            process="inline",  # the daemon's process is the syncer; nothing else reads the file in it
            live=config.live,
            upload=None if config.writes_url is None else HttpUpload(
                config.writes_url, {name: source.value() for name, source in config.writes_headers.items()},
                verify=str(config.ca_file) if config.ca_file is not None else True),
        )
        self.metrics = Metrics(config.database, self.replica.status, self.ready)

    # --- what the endpoint reports ---

    def ready(self) -> bool:
        return not self.stopping and all(_shape_ready(s) for s in self.replica.status())

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready?, and a JSON body naming every shape that is not, and why."""
        shapes = self.replica.status()
        ready = self.ready()
        body = {
            "ready": ready,
            "not_ready": [{"name": s.name, "state": s.state, "reason": self._reason(s)}
                          for s in shapes if not _shape_ready(s)],
            "shapes": [self._shape_json(s) for s in shapes],
        }
        if self.stopping:
            body["reason"] = "shutting down"
        return ready, body

    def _shape_json(self, shape: ShapeStatus) -> dict[str, Any]:
        """The shape's status as ``replica status --json`` shows it, with its lag now, plus ``ready``
        (and ``last_up_to_date``, epoch seconds: the name this field had before, kept for clients)."""
        lag = None if shape.last_synced_at is None else round(max(0.0, time.time() - shape.last_synced_at), 3)
        body = replace(shape, lag=lag).to_json()
        body["error"] = self.redact(shape.error) if shape.error else None
        return {**body, "ready": _shape_ready(shape), "last_up_to_date": shape.last_synced_at}

    def _reason(self, shape: ShapeStatus) -> str:
        if shape.state == "error":
            return self.redact(f"stopped by an error: {shape.error}")
        if shape.last_synced_at is None:
            detail = f": {self.redact(shape.error)}" if shape.error else ""
            return f"initial sync not finished ({shape.state}{detail})"
        return shape.state

    # --- the run ---

    async def main(self, once: bool, timeout: float | None = None) -> int:
        code = EXIT_OK
        self.watch.start()
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            tg.start_soon(self._watch_signals, scope)
            tg.start_soon(self._report_progress)
            tg.start_soon(self._announce_ready)
            with scope, anyio.move_on_after(timeout) as deadline:
                try:
                    await self.replica.run(once=once)
                    if not once and not self.stopping:
                        log.error("every shape has stopped with an error; exiting")
                        code = EXIT_FATAL
                except ShapeError as exc:
                    log.error("%s", exc)
                    code = EXIT_FATAL
                except ReplicaError as exc:
                    log.error("%s", exc)
                    code = EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FATAL
            tg.cancel_scope.cancel()
        if self.stopping:
            log.info("stopped")
            return EXIT_OK
        if deadline.cancelled_caught:
            for line in self.watch.timed_out(timeout or 0, self.replica.status()):
                log.error("%s", line)
            return EXIT_FATAL
        if once and code == EXIT_OK:
            for line in self.watch.summary(self.config.database, [s.local_name for s in self.config.shapes]):
                log.info("%s", line)
        return code

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self.stopping:  # the second signal: do not wait for anything
                    os._exit(128 + signum)
                self.stopping = True
                log.info("%s: stopping (a commit in flight finishes first; signal again to exit at once)",
                         signal.Signals(signum).name)
                notify_systemd("STOPPING=1")
                scope.cancel()

    async def _announce_ready(self) -> None:
        if not await self.replica.synced():
            return  # the run ended first: every shape failed
        notify_systemd(f"READY=1\nSTATUS={len(self.config.shapes)} shape(s) up to date")

    async def _report_progress(self) -> None:
        interval = TTY_REFRESH if self.tty else self.config.progress_interval
        def finished() -> bool:  # read anew each time: the sync loop moves it
            return self.progress.finished

        while not finished():
            with anyio.move_on_after(interval):
                while not finished():
                    await anyio.sleep(0.05)
            if finished():
                break
            if self.tty:
                sys.stderr.write("\r\x1b[K" + self.redact(self.progress.line()))
                sys.stderr.flush()
            else:
                log.info("initial sync: %s", self.progress.line())
        log.info("initial sync done: %s", self.progress.line())

    # --- events from the sync loop ---

    def _observe(self, event: SyncEvent) -> None:
        self.metrics.observe(event)
        self.watch.observe(event)
        name = event.name
        if event.kind == "response":
            self.progress.received(name, event.size)
        elif event.kind == "commit" and event.applied is not None:
            applied = event.applied
            self.progress.rows(name, applied.rows if applied.published else applied.rows + applied.staged)
            if applied.published and (applied.refetch or applied.inserted or applied.updated or applied.deleted):
                log.debug("shape %s: +%d ~%d -%d rows (%d in table)", name, applied.inserted, applied.updated,
                          applied.deleted, applied.rows)
        elif event.kind == "retry":
            self.failures.failed(name, event.error or "error")
        elif event.kind == "refetch":
            log.info("shape %s: the server asked for a resync (409); old rows stay visible until it commits", name)
        elif event.kind == "state" and event.shape is not None:
            if event.shape.state in ("syncing", "live"):
                self.failures.recovered(name)
            if event.shape.state == "live":
                self.progress.reached(name)
            elif event.shape.state == "error":
                self.progress.reached(name, failed=True)

    async def _unauthorized(self, status: int) -> Mapping[str, str] | None:
        """401/403: read file and command credentials again, and retry with them."""
        await anyio.to_thread.run_sync(self._refresh_sources, status)
        return {name: source.value() for name, source in self.config.headers.items() if source.dynamic}

    def _refresh_sources(self, status: int) -> None:
        with self._refresh_lock:
            if time.monotonic() - self._refreshed < REFRESH_DEBOUNCE:
                return  # another shape's 401 just re-read them
            for source in self.config.sources():
                try:
                    if source.refresh():
                        log.info("%s: read a new value after HTTP %d", source.field, status)
                except ConfigError as exc:
                    log.warning("%s (keeping the previous value)", exc)
                self._remember(source)
            self._refreshed = time.monotonic()

    def _remember(self, source: Source) -> None:
        """Read ``source`` and make sure its value never reaches a log line or an endpoint."""
        value = source.value()
        name = source.field.rpartition(".")[2].lower()
        if source.dynamic or source.field == "secret" or is_sensitive(name):
            self.redact.add(value)
            self.redact.add(value[len(source.prefix):])


def _shape_ready(shape: ShapeStatus) -> bool:
    return shape.last_synced_at is not None and shape.state != "error"


def notify_systemd(message: str) -> None:
    """Send ``message`` to systemd's notify socket (Type=notify), if NOTIFY_SOCKET is set."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", exc.strerror or exc)
