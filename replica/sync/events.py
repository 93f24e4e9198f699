"""What the sync loop reports to observers (``Replica(observer=…)``): the daemon's metrics, progress and logs."""

from __future__ import annotations

from dataclasses import dataclass

from replica.status import ShapeStatus
from replica.store.publish import Applied

__all__ = ["SyncEvent"]


@dataclass(frozen=True)
class SyncEvent:
    """One observation from a follow loop.

    ``kind`` and the fields it sets:
      ``response``  an HTTP answer arrived: ``status``, ``size`` (body bytes)
      ``refetch``   the server made the shape start over (409 must-refetch, offset out of bounds)
      ``commit``    ``Store.apply`` returned: ``applied`` (staged or published; counts per operation)
      ``retry``     a failure will be retried: ``error``, ``delay`` (seconds)
      ``state``     the shape's state changed: ``shape`` (its new ShapeStatus, with its error)
      ``fallback``  the shape's SSE streams kept failing; it long-polls from now on: ``error`` (why)
      ``write_rejected`` the server refused a batch of local writes (rolled back): ``error``; ``name``
                    is the local table of its first change
    """

    kind: str
    name: str
    status: int | None = None
    size: int = 0
    applied: Applied | None = None
    error: str | None = None
    delay: float | None = None
    shape: ShapeStatus | None = None
