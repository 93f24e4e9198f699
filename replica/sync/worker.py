"""The sync process: ``python -m replica.sync.worker --fd N`` runs a Replica's engine for its parent.

The parent (``replica.sync.child``) sends one ``start`` message with the ``SyncConfig`` and how
to reach it; the worker runs ``run_engine`` and reports through the pipe everything the Replica
reports inline: state changes, commits (the parent acknowledges each, so its listeners still
back-pressure the sync), observations and log records. Credentials that are functions in the
parent (a token refresh) are asked for over the pipe before each request.

It never outlives its parent: the kernel sends SIGTERM when the parent dies (``PR_SET_PDEATHSIG``,
Linux), and EOF on the pipe means the same; either stops the engine as ``stop()`` does (a commit in
flight finishes), and a worker that has not exited ``EXIT_GRACE`` seconds later exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import pickle
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import anyio
import anyio.abc

from replica.errors import ReplicaError
from replica.store import Applied
from replica.sync.backoff import Backoff
from replica.sync.engine import Auth, SyncConfig, run_engine
from replica.sync.pipe import Channel

__all__ = ["EXIT_GRACE", "main"]

EXIT_GRACE = 30.0  # seconds a stopped worker may take (a big commit in flight) before it exits at once
_PR_SET_PDEATHSIG = 1


class _PipeHost:
    """``follow.Host`` over the pipe: what the follow loops report goes to the parent's Replica, in order."""

    def __init__(self, channel: Channel, observe: bool) -> None:
        self._channel = channel
        self._observing = observe

    def _set(self, name: str, **changes: Any) -> None:
        self._channel.post("set", name, changes)

    def _observe(self, kind: str, name: str, **fields: Any) -> None:
        if self._observing:
            self._channel.post("observe", kind, name, fields)

    async def _notify(self, applied: Applied) -> None:
        await self._channel.ask("notify", applied)  # answered once the parent's listeners have run

    def _reached(self, name: str) -> None:
        self._channel.post("reached", name)

    def _published(self, applied: list[Applied]) -> None:
        self._channel.post("published", applied)

    def _known(self, txids: list[tuple[int, int | None, str, float]], snapshots: list[tuple[str, Any]]) -> None:
        self._channel.post("known", txids, snapshots)

    def _rejected(self, batch: Any, message: str) -> None:
        self._channel.post("rejected", batch, message)


class _ForwardLogs(logging.Handler):
    """Log records go to the parent, which hands them to its own logging (its handlers, levels, redaction)."""

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._channel = channel
        self._loop = loop
        self.setFormatter(logging.Formatter())

    def emit(self, record: logging.LogRecord) -> None:
        fields = {"name": record.name, "levelno": record.levelno, "levelname": record.levelname,
                  "msg": record.getMessage(), "args": None, "pathname": record.pathname, "lineno": record.lineno,
                  "funcName": record.funcName, "created": record.created, "exc_text": record.exc_text}
        if record.exc_info:
            fields["exc_text"] = self.format_exception(record)
        try:
            self._loop.call_soon_threadsafe(self._channel.post, "log", fields)  # any thread: the writer's too
        except RuntimeError:  # the loop has closed: nothing to forward to
            pass

    def format_exception(self, record: logging.LogRecord) -> str:
        assert self.formatter is not None and record.exc_info
        return self.formatter.formatException(record.exc_info)


async def serve(channel: Channel) -> None:
    """Run the engine the parent's ``start`` message describes, until it ends, ``stop``, SIGTERM or EOF."""
    with ExitStack() as stack:
        await _serve(channel, stack)


async def _serve(channel: Channel, stack: ExitStack) -> None:
    kind, config, options = await channel.receive()
    if kind != "start" or not isinstance(config, SyncConfig):
        raise ValueError(f"the first message on replica's pipe must be start, not {kind!r}")
    for name, level in options["levels"].items():
        logging.getLogger(name).setLevel(level)
    if options["no_waits"]:  # the parent runs under Backoff.testing(): so do we
        stack.enter_context(Backoff.testing())
    logging.getLogger().addHandler(_ForwardLogs(channel, asyncio.get_running_loop()))
    redact = options["redact"]

    # Asked before every request (the parent resolves functions, e.g. a token refresh): a round
    # trip of ~0.1 ms next to an HTTP request, and no copy of a value that changes.
    async def ask_headers() -> dict[str, str]:
        headers: dict[str, str] = await channel.ask("headers") or {}
        for value in headers.values():
            redact.refreshed(value)
        return headers

    async def ask_params() -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = await channel.ask("params") or []
        for _name, value in params:
            redact.refreshed(value)
        return params

    async def ask_unauthorized(status: int) -> Any:
        return await channel.ask("unauthorized", status)

    async def ask_upload(batch: Any) -> Any:
        return await channel.ask("upload", batch)  # answered in the app's process, by its function

    auth = Auth(ask_headers, ask_params, ask_unauthorized if options["on_unauthorized"] else None, redact,
                ask_upload if options.get("upload") else None)
    host = _PipeHost(channel, options["observe"])
    signalled: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.pump)
        async with anyio.create_task_group() as running:
            running.start_soon(_listen, channel, running.cancel_scope)
            running.start_soon(_stop_on_signal, running.cancel_scope, signalled)
            try:
                await run_engine(config, host, auth, once=options["once"])
            except Exception as exc:  # the parent raises it from run(): it must arrive whole
                channel.post("failed", _portable(exc))
            running.cancel_scope.cancel()
        # Done: the run ended, or the parent asked. A signal from elsewhere is not the parent's
        # stop, so it hears why this process went, and starts another.
        if signalled:
            channel.post("gone", f"was stopped by {signalled[0]}")
        else:
            channel.post("done")
        channel.close_outbox()  # pump sends what is queued, then the task group ends


def _portable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # e.g. an exception whose constructor needs other arguments: keep its words
        return ReplicaError(f"{type(exc).__name__}: {exc}")
    return exc


async def _listen(channel: Channel, scope: anyio.CancelScope) -> None:
    try:
        while True:
            message = await channel.receive()
            if message[0] == "stop":
                break
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        channel.abandon()  # the parent is gone: nobody will answer
    _exit_soon()
    scope.cancel()  # as stop(): a commit in flight finishes first


async def _stop_on_signal(scope: anyio.CancelScope, signalled: list[str]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            signalled.append(signal.Signals(signum).name)
            _exit_soon()
            scope.cancel()
            return


def _exit_soon() -> None:
    timer = threading.Timer(EXIT_GRACE, os._exit, (70,))  # EX_SOFTWARE: the engine did not stop in time
    timer.daemon = True
    timer.start()


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # not glibc: the pipe's EOF still stops us
            pass
    if os.getppid() != parent:  # the parent died before the kernel knew to tell us
        os._exit(0)


async def _run(fd: int) -> None:
    stream = await anyio.abc.UNIXSocketStream.from_socket(socket.socket(fileno=fd))
    channel = Channel(stream)
    try:
        await serve(channel)
    finally:
        with anyio.CancelScope(shield=True):
            await channel.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replica.sync.worker", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the inherited socket to the parent")
    parser.add_argument("--parent", type=int, required=True, help="the parent's pid")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    anyio.run(_run, args.fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
