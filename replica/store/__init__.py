"""store: the SQLite file replica writes, over apsw — the file and its lock (``file``), positions and
staging (``staging``), synced tables (``tables``), the up-to-date transaction (``publish``) and the
``Store`` that runs each commit as one transaction with its checkpoint (``store``).

May import: the foundation, ``replica.typemap``, ``replica.protocol``, ``replica.fast``.
Never imported by: ``replica.protocol``, ``replica.typemap``, ``replica.fast``.
"""

from replica.store.file import connect
from replica.store.publish import Applied
from replica.store.store import Pending, Store

__all__ = ["Applied", "Pending", "Store", "connect"]
