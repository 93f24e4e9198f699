"""What the sync loop reports: each shape's state, and observations for metrics and logs."""

from __future__ import annotations

from dataclasses import dataclass

from replica.store.store import Applied

__all__ = ["ShapeState", "SyncEvent"]


@dataclass(frozen=True)
class ShapeState:
    """What one shape is doing now. ``state`` is connecting, syncing, live, offline, error or stopped."""

    name: str
    state: str
    handle: str | None = None
    offset: str | None = None
    rows: int | None = None
    last_synced_at: float | None = None  # epoch seconds of the last up-to-date
    error: str | None = None


@dataclass(frozen=True)
class SyncEvent:
    """One observation from a follow loop, for metrics, progress and logs (``Replica(observer=…)``).

    ``kind`` and the fields it sets:
      ``response``  an HTTP answer arrived: ``status``, ``size`` (body bytes)
      ``refetch``   the server made the shape start over (409 must-refetch, offset out of bounds)
      ``commit``    ``Store.apply`` returned: ``applied`` (staged or published; counts per operation)
      ``retry``     a failure will be retried: ``error``, ``delay`` (seconds)
      ``state``     the shape's state changed: ``shape`` (the new ShapeState, with its error)
    """

    kind: str
    name: str
    status: int | None = None
    size: int = 0
    applied: Applied | None = None
    error: str | None = None
    delay: float | None = None
    shape: ShapeState | None = None
