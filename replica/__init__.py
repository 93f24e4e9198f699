"""replica: a local, offline-queryable SQLite copy of Postgres data, kept in sync through
ElectricSQL's HTTP Shape API.

    from replica import Replica, Shape

    async with Replica("app.db", "http://localhost:3000/v1/shape", [Shape("items")]) as r:
        await r.synced()          # every shape has committed its first up-to-date
        ...                       # query app.db with any SQLite tool, while it stays in sync
"""

__version__ = "0.1.0"

from replica.sync.backoff import Backoff
from replica.store.file import connect
from replica.errors import (
    ConfigError,
    NetworkError,
    ProtocolError,
    ReplicaError,
    ServerBusy,
    ShapeError,
    StoreError,
    TransientError,
)
from replica.protocol.shapelog import Checkpoint, Commit, Shape, ShapeLog
from replica.store.store import Applied, Store
from replica.sync.replica import Replica, ShapeState
from replica.tuning import tune_process

__all__ = [
    "Applied",
    "Backoff",
    "Checkpoint",
    "Commit",
    "ConfigError",
    "NetworkError",
    "ProtocolError",
    "Replica",
    "ReplicaError",
    "ServerBusy",
    "Shape",
    "ShapeError",
    "ShapeLog",
    "ShapeState",
    "Store",
    "StoreError",
    "TransientError",
    "__version__",
    "connect",
    "tune_process",
]
