"""fast: the snapshot fast path. Bodies of whole-row inserts are read and converted by SQLite
(``typemap.sql``) on worker threads into in-memory databases, ahead of the writer (``convert``).

May import: the foundation, ``replica.typemap``, ``replica.protocol``.
Never imported by: ``replica.protocol``, ``replica.typemap``; the store uses it.
"""
