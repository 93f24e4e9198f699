"""A Replica's engine in a child process, so the app's own SQLite library is the only one in its process.

apsw links its own copy of SQLite. Two copies of SQLite in one process do not see each other's
POSIX locks: an app closing a stdlib ``sqlite3`` connection drops apsw's locks and may delete the
WAL under the writer (docs/design.md §9). So by default the writer — HTTP, conversion, the apsw
store — runs in ``python -m replica.sync.worker``, and this process keeps only the Replica's state,
fed over a socket pair (``replica.sync.pipe``): states, commits (acknowledged once the listeners
ran), observations and log records. The child asks for credentials that are functions here.

The child never outlives this process (``PR_SET_PDEATHSIG`` and EOF on the pipe), is restarted with
backoff if it dies (the shapes show ``offline`` and why meanwhile), and ``stop()`` stays bounded: the
child finishes a commit in flight and exits, or is killed ``STOP_WAIT`` seconds later.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Protocol

import anyio
import anyio.abc

from replica.status import ShapeStatus
from replica.store import Applied
from replica.sync.backoff import Backoff
from replica.sync.engine import Auth, SyncConfig
from replica.sync.follow import Host
from replica.sync.pipe import ASK, Channel, Message

__all__ = ["Parent", "can_run_child", "run_child"]

log = logging.getLogger("replica")

STOP_WAIT = 35.0  # seconds to wait for a stopped child (a big commit in flight), after which it is killed
RESTART = Backoff(initial=0.5, multiplier=2.0, cap=30.0)
STABLE_AFTER = 60.0  # a child that ran this long resets the restart backoff
_LOGGERS = ("replica", "httpx", "httpcore")  # whose levels the child takes from here


class Parent(Host, Protocol):
    """What the child reports to and asks: the Replica (``follow.Host``, its status and whether it observes)."""

    def status(self) -> list[ShapeStatus]: ...
    @property
    def observing(self) -> bool: ...


def can_run_child() -> bool:
    """A child needs Unix sockets and inherited descriptors (not on Windows)."""
    return hasattr(socket, "AF_UNIX") and os.name == "posix"


async def run_child(config: SyncConfig, parent: Parent, auth: Auth, *, once: bool) -> None:
    """Run the engine in a child process until it ends (``once``) or this is cancelled; restart it if it dies."""
    attempt = 0
    while True:
        started = time.monotonic()
        why = await _run_one(config, parent, auth, once)
        if why is None:
            return  # it finished its run
        if time.monotonic() - started > STABLE_AFTER:
            attempt = 0
        delay = RESTART.delay(attempt)
        attempt += 1
        message = f"the sync process {why}; restarting it in {delay:.1f} s (the shape resumes from its last commit)"
        log.warning("%s", message)
        for status in parent.status():
            if status.state != "error":  # a shape stopped by its own error stays stopped
                parent._set(status.name, state="offline", error=message)
        await anyio.sleep(delay)


async def _run_one(config: SyncConfig, parent: Parent, auth: Auth, once: bool) -> str | None:
    """One child's life: None when it finished its run, else why it went."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = await anyio.open_process(
            [sys.executable, "-m", "replica.sync.worker", "--fd", str(theirs.fileno()), "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=None, stderr=None, pass_fds=[theirs.fileno()], env=_child_env(),
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    channel = Channel(await anyio.abc.UNIXSocketStream.from_socket(ours))
    options = {"once": once, "observe": parent.observing, "redact": auth.redact, "no_waits": Backoff.testing_now(),
               "on_unauthorized": auth.on_unauthorized is not None, "upload": auth.upload is not None,
               "levels": {name: logging.getLogger(name).getEffectiveLevel() for name in _LOGGERS}}
    channel.post("start", config, options)
    outcome: list[Any] = []
    finished = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            # Both shielded: a read cancelled mid-message would lose its place in the stream, and the
            # stop must still go out. Reading ends when the child says done, or its end closes.
            tg.start_soon(_shielded, channel.pump)
            tg.start_soon(_shielded, partial(_receive, channel, parent, auth, outcome, finished))
            try:
                await finished.wait()
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    channel.post("stop")  # the child finishes a commit in flight, then says done
                    with anyio.move_on_after(STOP_WAIT):
                        await finished.wait()
                    if not finished.is_set():
                        process.kill()  # its end of the pipe closes: reading ends
                        await finished.wait()
                raise
            finally:
                channel.close_outbox()
    finally:
        with anyio.CancelScope(shield=True):
            await _reap(process)
            await channel.aclose()
    failure = next((item for item in outcome if isinstance(item, BaseException)), None)
    if failure is not None:
        raise failure  # as run() raises it inline: the store or the TLS settings could not be opened
    if "done" in outcome:
        return None
    said = [item for item in outcome if isinstance(item, str)]
    if said:
        return said[-1]
    code = process.returncode
    return f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"


async def _receive(channel: Channel, parent: Parent, auth: Auth, outcome: list[Any], finished: anyio.Event) -> None:
    """Hand the child's messages to the Replica until it says done, or goes."""
    try:
        await _receive_all(channel, parent, auth, outcome)
    finally:
        finished.set()


async def _receive_all(channel: Channel, parent: Parent, auth: Auth, outcome: list[Any]) -> None:
    async with anyio.create_task_group() as uploads:  # an upload may take long: the rest keeps flowing
        await _receive_each(channel, parent, auth, outcome, uploads)
        uploads.cancel_scope.cancel()  # the child is done: nobody waits for an answer


async def _receive_each(
    channel: Channel, parent: Parent, auth: Auth, outcome: list[Any], uploads: anyio.abc.TaskGroup
) -> None:
    while True:
        try:
            message = await channel.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            channel.abandon()
            return
        kind = message[0]
        if kind == "set":
            parent._set(message[1], **message[2])
        elif kind == "observe":
            parent._observe(message[1], message[2], **message[3])
        elif kind == "reached":
            parent._reached(message[1])
        elif kind == "known":
            parent._known(message[1], message[2])
        elif kind == "published":
            parent._published(message[1])
        elif kind == "log":
            _relog(message[1])
        elif kind == "rejected":
            parent._rejected(message[1], message[2])
        elif kind == ASK and message[2] == "upload" and auth.upload is not None:
            uploads.start_soon(_answer_upload, channel, message[1], auth.upload, message[3])
        elif kind == ASK:
            channel.reply(message[1], await _answer(message, parent, auth))
        elif kind == "failed":
            outcome.append(message[1])
        elif kind == "gone":  # stopped by a signal that was not our stop: said why, then goes
            outcome.append(str(message[1]))
        elif kind == "done":
            outcome.append("done")
            return


async def _answer(message: Message, parent: Parent, auth: Auth) -> Any:
    _ask, _number, question, *args = message
    try:
        if question == "notify":
            applied: Applied = args[0]
            await parent._notify(applied)
            return None
        if question == "headers":
            return await auth.headers()
        if question == "params":
            return await auth.params()
        if question == "unauthorized" and auth.on_unauthorized is not None:
            headers = await _maybe_await(auth.on_unauthorized(args[0]))
            if headers is not None:
                auth.redact.learn(headers.items())
                return dict(headers)
    except Exception:  # a hook's bug: the child gets no answer's worth (as a listener's bug inline)
        log.exception("answering the sync process (%s) failed", question)
    return None


async def _answer_upload(channel: Channel, number: int, upload: Any, batch: Any) -> None:
    channel.reply(number, await upload(batch))


def _relog(fields: Mapping[str, Any]) -> None:
    logger = logging.getLogger(str(fields["name"]))
    if logger.isEnabledFor(int(fields["levelno"])):
        logger.handle(logging.makeLogRecord(dict(fields)))


async def _reap(process: anyio.abc.Process) -> None:
    """Wait for the child (no zombie); kill it if it does not exit in STOP_WAIT seconds."""
    with anyio.move_on_after(STOP_WAIT):
        await process.wait()
        return
    process.kill()
    await process.wait()


async def _shielded(call: Callable[[], Awaitable[None]]) -> None:
    with anyio.CancelScope(shield=True):  # the stop message must still go out after a cancel
        await call()


def _child_env() -> dict[str, str]:
    # The child imports replica from wherever this process did (an app may have put it on sys.path).
    path = os.pathsep.join(entry for entry in sys.path if entry)
    return {**os.environ, "PYTHONPATH": path}


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
