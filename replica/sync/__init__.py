"""sync: the I/O rims and the loop. The HTTP rim (``http``), the retry policy (``backoff``), the
follow loop per shape (``follow``; its live SSE streams, fallback and watchdog in ``stream``) and the
``Replica`` supervisor (``replica``), what they report (``events``).

May import: every layer below (``typemap``, ``protocol``, ``fast``, ``store``) and the foundation.
Never imported by: any layer below; ``replica.cli`` and apps use it.
"""

from replica.sync.backoff import Backoff
from replica.sync.events import SyncEvent
from replica.sync.replica import Replica

__all__ = ["Backoff", "Replica", "SyncEvent"]
