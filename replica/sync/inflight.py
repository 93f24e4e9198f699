"""A writer step running behind the fetch: the sync loop stages response N while it downloads N+1.

SQLite runs without the GIL, so an initial sync overlaps its downloads and its writes; the loop
keeps at most one step in flight per shape and collects its outcome before writing anything else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["InFlight"]

T = TypeVar("T")


class InFlight(Generic[T]):
    """One awaitable call run as a task; ``result`` returns its value or raises its error."""

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
