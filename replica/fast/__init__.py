"""fast: the snapshot fast path, behind one small interface. A body of whole-row inserts
(``protocol.InsertBody``) is read and converted by SQLite (``typemap.sql``): on worker threads
into in-memory databases while it is validated (``Converter.start`` → ``Conversion``), then copied
by the writer inside its transaction (``attached`` + ``write_inserts``); or, without a usable
conversion, read by the writer itself. ``write_inserts`` returns False when the Python route
must take over.

May import: the foundation, ``replica.typemap``, ``replica.protocol``.
Never imported by: ``replica.protocol``, ``replica.typemap``; the store uses it.
"""

from replica.fast.bulk import write_inserts
from replica.fast.convert import Attached, Conversion, Converter, attached, register

__all__ = ["Attached", "Conversion", "Converter", "attached", "register", "write_inserts"]
