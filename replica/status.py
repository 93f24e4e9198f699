"""One shape of status, wherever a shape's status is shown: ``Replica.status()``, the store's
``_replica_shapes``, ``replica status`` (table and ``--json``) and the daemon's ``/readyz``. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["LIVE_MODES", "STATES", "ShapeStatus", "iso_time", "parse_time"]

#: What a shape is doing: connecting, syncing (snapshot or catch-up), live (up to date, long-polling),
#: offline (retrying after a failure), error (stopped by a fatal error), stopped (not running).
STATES = ("connecting", "syncing", "live", "offline", "error", "stopped")
#: How a running shape receives live changes (``ShapeStatus.live_mode``).
LIVE_MODES = ("long-poll", "sse", "sse-fallback")


@dataclass(frozen=True)
class ShapeStatus:
    """One shape's status. ``name`` is its local table.

    ``rows``: rows in the local table; ``handle``/``offset``: its position in the shape log;
    ``last_synced_at``: epoch seconds of the last up-to-date it reached (None before the first);
    ``error``: why it is offline or stopped; ``staged``: changes of an unfinished snapshot or
    burst waiting on disk; ``lag``: seconds since it was last known up to date (only where a
    clock was read: ``replica status``). ``live_mode``: how live changes arrive while it runs:
    ``long-poll``, ``sse`` (one held Server-Sent Events stream) or ``sse-fallback`` (SSE was asked
    for, but its streams kept failing, so the shape long-polls; the log said why once).
    ``write_rejected``: a writable shape's latest rejected upload (the server's message), this run.
    """

    name: str
    state: str
    handle: str | None = None
    offset: str | None = None
    rows: int | None = None
    last_synced_at: float | None = None
    error: str | None = None
    staged: int = 0
    lag: float | None = None
    live_mode: str | None = None
    write_rejected: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form: ``last_synced_at`` as ISO 8601 UTC text, every other field as it is."""
        return {
            "name": self.name,
            "state": self.state,
            "rows": self.rows,
            "handle": self.handle,
            "offset": self.offset,
            "last_synced_at": iso_time(self.last_synced_at),
            "lag": self.lag,
            "error": self.error,
            "staged": self.staged,
            "live_mode": self.live_mode,
            "write_rejected": self.write_rejected,
        }


def iso_time(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def parse_time(text: str | None) -> float | None:
    """Epoch seconds of an ISO 8601 time; None for None or text that is not one."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
