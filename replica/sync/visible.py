"""Which Postgres transactions a Replica's readers can see, for waits on an app's own write.

The app writes through its own API, which returns the Postgres txid (``pg_current_xact_id()``), and
waits until that transaction is visible locally (``Replica.txid_synced``, ``wait_until_txid``,
the daemon's ``GET /txid/{txid}``). It is visible once a published commit applied a change that
carried it, or once a published snapshot sees it (it committed before the snapshot was taken, so
its rows came as snapshot rows). ``Visible`` keeps both, fed by every published ``Applied`` and, at
start, by what the store remembers (the last 10,000 transactions of the last 10 minutes). A
transaction that changed no synced row never appears: a wait for it ends at its timeout.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import anyio

from replica.protocol.txids import Visibility, parse_txid
from replica.store import Applied

__all__ = ["KEEP", "Seen", "Visible"]

KEEP = 10_000  # transactions remembered in memory (the store keeps as many)


@dataclass(frozen=True)
class Seen:
    """A visible transaction: the shapes whose readers see it, and its commit LSN (None when only a
    snapshot is known to contain it)."""

    txid: int
    shapes: tuple[str, ...]
    lsn: int | None


class Visible:
    """Thread-safe: updated from the event loop; waited on from it (``wait``) or any thread (``wait_blocking``)."""

    def __init__(self) -> None:
        self._txids: OrderedDict[int, tuple[set[str], int | None]] = OrderedDict()
        self._snapshots: dict[str, Visibility] = {}
        self._changed = threading.Condition()
        self._events: list[anyio.Event] = []

    def published(self, applied: Iterable[Applied]) -> None:
        """What one transaction (one shape's commit, or a group's) made visible: all at once."""
        applied = list(applied)
        self.add([(txid, done.lsn, done.name) for done in applied for txid in done.txids],
                 [(done.name, done.snapshot) for done in applied if done.snapshot is not None])

    def add(self, txids: Iterable[tuple[int, int | None, str]], snapshots: Iterable[tuple[str, Visibility]]) -> None:
        with self._changed:
            for txid, lsn, name in txids:
                names, known = self._txids.pop(txid, (set(), None))
                names.add(name)
                self._txids[txid] = (names, lsn if lsn is not None else known)
            while len(self._txids) > KEEP:
                self._txids.popitem(last=False)
            self._snapshots.update(snapshots)
            self._changed.notify_all()
        events, self._events = self._events, []
        for event in events:
            event.set()

    def seen(self, txid: int | str) -> Seen | None:
        """The transaction if readers can see it now; ValueError if ``txid`` is not a transaction id."""
        number = parse_txid(txid) if isinstance(txid, str) else _checked(txid)
        with self._changed:
            names, lsn = self._txids.get(number, (set(), None))
            names = names | {name for name, snapshot in self._snapshots.items() if snapshot.sees(number)}
        return Seen(number, tuple(sorted(names)), lsn) if names else None

    async def wait(self, txid: int | str, timeout: float | None = None) -> Seen | None:
        with anyio.move_on_after(timeout):
            while True:
                event = anyio.Event()
                self._events.append(event)
                found = self.seen(txid)
                if found is not None:
                    return found
                await event.wait()
        return self.seen(txid)

    def wait_blocking(self, txid: int | str, timeout: float | None = None) -> Seen | None:
        with self._changed:
            self._changed.wait_for(lambda: self.seen(txid) is not None, timeout)
        return self.seen(txid)


def _checked(txid: int) -> int:
    if isinstance(txid, bool) or not 0 < txid < 2**64:
        raise ValueError(f"a transaction id is a positive 64-bit number (pg_current_xact_id()), got {txid!r}")
    return txid
