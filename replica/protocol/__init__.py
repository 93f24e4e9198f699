"""protocol: Electric's Shape API without I/O. Wire vocabulary (``wire``), response bodies
(``messages``, ``snapshot``, ``framing``, ``answers``), the ``Shape`` and the ``ShapeLog`` state
machine that turns responses into ``Commit``s (``shapelog``); live Server-Sent Events: the event
stream format (``sse``) and a stream's batches into the ShapeLog (``stream``). Pure: no httpx, anyio, apsw, clock.

May import: ``replica.errors``, ``replica.redaction``, ``replica.typemap``.
Never imported by: ``replica.typemap``; everything above uses it.
"""

from replica.protocol.messages import Change, Control, parse_body
from replica.protocol.shape import Shape
from replica.protocol.shapelog import Checkpoint, Commit, Request, Response, ShapeLog
from replica.protocol.snapshot import InsertBody

__all__ = ["Change", "Checkpoint", "Commit", "Control", "InsertBody", "Request", "Response", "Shape", "ShapeLog",
           "parse_body"]
