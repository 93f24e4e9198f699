"""protocol: Electric's Shape API without I/O. Wire vocabulary (``wire``), response bodies
(``messages``, ``snapshot``, ``framing``, ``answers``), the ``Shape`` and the ``ShapeLog`` state
machine that turns responses into ``Commit``s (``shapelog``). Pure: no httpx, anyio, apsw, clock.

May import: ``replica.errors``, ``replica.redaction``, ``replica.typemap``.
Never imported by: ``replica.typemap``; everything above uses it.
"""
