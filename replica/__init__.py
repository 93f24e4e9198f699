"""replica: a local, offline-queryable SQLite copy of Postgres data, kept in sync through
ElectricSQL's HTTP Shape API.

    from replica import Replica, Shape

    async with Replica("app.db", "http://localhost:3000/v1/shape", [Shape("items")]) as r:
        await r.synced()          # every shape has committed its first up-to-date
        ...                       # query app.db with any SQLite tool, while it stays in sync

The layers, bottom to top (docs/design.md §2): ``typemap`` (Postgres text → SQLite values),
``protocol`` (the Shape API without I/O), ``fast`` (the snapshot fast path), ``store`` (the
SQLite file), ``sync`` (HTTP and the loop: ``Replica``), ``cli``; ``testing`` is the fake server.
"""

from __future__ import annotations

import warnings
from typing import Any as _Any

__version__ = "0.1.0"

from replica.errors import (
    ConfigError,
    NetworkError,
    NotAShapeLog,
    ProtocolError,
    ReplicaError,
    ServerBusy,
    ShapeError,
    StoreError,
    TransientError,
    WriteRejected,
)
from replica.protocol import Checkpoint, Commit, Shape, ShapeLog
from replica.status import ShapeStatus
from replica.store import Applied, Store, connect
from replica.sync import Backoff, Replica, SyncEvent

ShapeState = ShapeStatus  # the name Replica.status() items had before one status shape served everywhere

__all__ = [
    "Applied",
    "Backoff",
    "Checkpoint",
    "Commit",
    "ConfigError",
    "NetworkError",
    "NotAShapeLog",
    "ProtocolError",
    "Replica",
    "ReplicaError",
    "ServerBusy",
    "Shape",
    "ShapeError",
    "ShapeLog",
    "ShapeState",
    "ShapeStatus",
    "Store",
    "StoreError",
    "SyncEvent",
    "TransientError",
    "WriteRejected",
    "__version__",
    "connect",
]


def __getattr__(name: str) -> _Any:
    if name == "tune_process":  # moved: it changes the whole process, so it is not part of the sync API
        warnings.warn("replica.tune_process is deprecated: use replica.tuning.tune_process", DeprecationWarning,
                      stacklevel=2)
        from replica.tuning import tune_process

        return tune_process
    raise AttributeError(f"module 'replica' has no attribute {name!r}")
