"""The channel between a Replica and its sync process: length-prefixed pickles over a socket pair.

Both ends are replica itself (the same interpreter, the same user), so pickle is safe here and
carries its values (ShapeStatus, Applied, SyncEvent) as they are. Messages go out in the order they
are posted, through one outbox that ``pump`` writes to the socket (run it as a task); ``ask`` posts
a question and waits for the answer the other end posts with ``reply``. EOF means the other
process is gone.
"""

from __future__ import annotations

import itertools
import math
import pickle
import struct
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["ASK", "REPLY", "Channel", "Message"]

Message = tuple[Any, ...]
ASK, REPLY = "ask", "reply"  # ("ask", id, question, *args) → ("reply", id, answer)
_HEADER = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024  # a status, an Applied with its keys: far below this


class Channel:
    """One end of the pipe. Post from the event loop's thread; receive from one task; ``pump`` in another."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._outbox, self._outgoing = anyio.create_memory_object_stream[bytes](math.inf)
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[anyio.Event, list[Any]]] = {}

    def post(self, *message: Any) -> None:
        """Queue ``message`` to be sent after every message posted before it."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._outbox.send_nowait(_HEADER.pack(len(data)) + data)

    async def pump(self) -> None:
        """Write the outbox to the socket until the outbox closes or the peer goes (run as a task)."""
        async with self._outgoing:
            try:
                async for frame in self._outgoing:
                    await self._stream.send(frame)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the peer is gone: what is left has nobody to read it

    async def receive(self) -> Message:
        """The next message that is not an answer to our own question. EndOfStream when the peer is gone."""
        while True:
            try:
                (size,) = _HEADER.unpack(await self._reader.receive_exactly(_HEADER.size))
                if size > MAX_MESSAGE:
                    raise ValueError(f"a message of {size} bytes on replica's pipe: the peer is not replica")
                message: Message = pickle.loads(await self._reader.receive_exactly(size))
            except anyio.IncompleteRead:
                raise anyio.EndOfStream from None  # the peer went away mid-message
            if message[0] != REPLY:
                return message
            waiter = self._waiting.pop(message[1], None)
            if waiter is not None:
                waiter[1].append(message[2])
                waiter[0].set()

    async def ask(self, question: str, *args: Any) -> Any:
        """Post a question and wait for its answer (someone must be calling ``receive`` meanwhile).
        None if the peer goes away first."""
        number = next(self._ids)
        done, answer = anyio.Event(), list[Any]()
        self._waiting[number] = (done, answer)
        try:
            self.post(ASK, number, question, *args)
            await done.wait()
        finally:
            self._waiting.pop(number, None)
        return answer[0]

    def reply(self, number: int, answer: Any) -> None:
        self.post(REPLY, number, answer)

    def abandon(self) -> None:
        """Wake every question still waiting, with None: the peer is gone."""
        for done, answer in self._waiting.values():
            answer.append(None)
            done.set()
        self._waiting.clear()

    def close_outbox(self) -> None:
        """No more messages: ``pump`` sends what is queued, then returns."""
        self._outbox.close()

    async def aclose(self) -> None:
        self.abandon()
        self._outbox.close()
        await self._stream.aclose()
