"""replica's exceptions, grouped by what the caller does next.

    ReplicaError
    ├── ConfigError      bad config or Shape; raised before any I/O          → fix the config (CLI exit 2)
    ├── ShapeError       the server refused the shape (400/401/403/404),      → stop this shape only (R7)
    │                    or its schema is unusable
    ├── TransientError   the same request may succeed later                   → back off, resend
    │   ├── NetworkError connect/read/timeout/reset (wraps httpx errors)
    │   └── ServerBusy   429/5xx; ``retry_after`` is a floor for the wait
    ├── ProtocolError    a response broke the contract (bad JSON, missing     → back off, rebuild from checkpoint
    │   │                header, offset regressed)
    │   └── NotAShapeLog the answer is no shape log at all (a wrong URL, a   → the same; a shape with no stored
    │                    proxy's page): the message names the URL to use       position stops after a few in a row
    ├── StoreError       SQLite failed (wraps apsw errors)                    → back off, rebuild from checkpoint
    └── WriteRejected    the server refused a batch of local writes (a 4xx,   → roll the batch back locally,
                         or an upload function's own verdict)                   report it, go on with the next

Foreign exceptions are translated in exactly two places: ``replica.http`` (httpx) and
``replica.store`` (apsw), always chained with ``from``. Cancellation is never wrapped.
Messages never contain secrets: URLs are redacted before they are put in a message.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "NetworkError",
    "NotAShapeLog",
    "ProtocolError",
    "ReplicaError",
    "ServerBusy",
    "ShapeError",
    "StoreError",
    "TransientError",
    "WriteRejected",
]


class ReplicaError(Exception):
    """Base of every error replica raises on purpose."""


class ConfigError(ReplicaError):
    """The configuration or a Shape is invalid. Nothing was sent; fix the named field."""


class ShapeError(ReplicaError):
    """The server refused this shape, or its schema cannot be stored. Retrying will not help.

    ``status`` is the HTTP status when the server answered (400, 401, 403, 404), else None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(ReplicaError):
    """The same request may succeed later: back off and resend it."""


class NetworkError(TransientError):
    """The connection failed, timed out, or was reset before a whole response arrived."""


class ServerBusy(TransientError):
    """The server answered 429 or 5xx. Wait at least ``retry_after`` seconds (when given)."""

    def __init__(self, message: str, *, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ProtocolError(ReplicaError):
    """A response broke the Electric protocol. Back off and resume from the last checkpoint."""


class NotAShapeLog(ProtocolError):
    """A 200 that is not a shape log at all: no Electric headers and a body that is no array of
    messages (an HTML page, Electric's empty root), or a content type that is not JSON. Usually
    the URL is not the shape endpoint; the message names the one Electric serves shapes at.
    A shape with no stored position stops after a few in a row (``Replica(wrong_url_limit=…)``);
    one that synced before keeps retrying, as for any ``ProtocolError``.
    """


class StoreError(ReplicaError):
    """SQLite failed. Back off and resume from the last checkpoint (nothing half-written stays)."""


class WriteRejected(ReplicaError):
    """The server (or the ``upload`` function) refused a batch of local writes: replica removes the
    batch's pending changes, reports it (``on_write_rejected``) and uploads the next batch.
    ``status``: the HTTP status, when the refusal came from a write endpoint."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
