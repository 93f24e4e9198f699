"""One writer step run as a task behind the fetch (the follow loop stages a snapshot chunk in the
writer thread while the next one downloads)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["InFlight"]

T = TypeVar("T")


class InFlight(Generic[T]):
    """One writer step run as a task behind the fetch; ``result`` returns its value or raises its error."""

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._outcome: T | BaseException | None = None

    async def run(self, call: Callable[..., Awaitable[T]], *args: Any) -> None:
        try:
            self._outcome = await call(*args)
        except Exception as exc:  # handed to the follow loop, which knows what to do with it
            self._outcome = exc
        finally:
            self._done.set()

    async def result(self) -> T:
        await self._done.wait()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    async def settle(self) -> None:
        """Wait for it to finish; its outcome no longer matters (the loop is already recovering)."""
        await self._done.wait()
