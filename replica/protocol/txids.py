"""Postgres transactions in the shape log: commit LSNs, transaction ids, and snapshot visibility.

A change from the replication stream carries ``lsn`` (its transaction's commit LSN: equal LSN, one
transaction) and ``txids``; an ``up-to-date`` carries ``global_last_seen_lsn``, the LSN the shape is
complete up to; a ``snapshot-end`` carries the snapshot's ``xmin``/``xmax``/``xip_list`` (xid8, 64-bit).
An app learns its own write's txid with ``pg_current_xact_id()`` (xid8) or ``…::xid`` (32-bit); both
are compared here the way Postgres compares them. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from replica.errors import ProtocolError
from replica.protocol.messages import Change, Move, header_list

__all__ = ["MAX_LSN", "Visibility", "change_lsn", "change_txids", "parse_lsn", "parse_txid", "widen_xid"]

MAX_LSN = 2**63 - 1  # LSNs are uint64; SQLite integers are int64 (8 EiB of WAL: never reached)
_DECIMAL = re.compile(r"[0-9]{1,20}")


def parse_lsn(value: Any, what: str = "lsn") -> int:
    """An LSN as Electric sends it (a decimal string; a number from older servers). ProtocolError if not one."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text) or int(text) > MAX_LSN:
        raise ProtocolError(f"{what} must be a decimal LSN, got {value!r}")
    return int(text)


def parse_txid(text: str) -> int:
    """A transaction id as an app writes it: decimal, 32-bit xid or 64-bit xid8. ValueError if not one."""
    if not _DECIMAL.fullmatch(text.strip()) or not 0 < int(text) < 2**64:
        raise ValueError(f"a transaction id is a positive decimal number (pg_current_xact_id()), got {text!r}")
    return int(text)


def change_lsn(change: Change | Move) -> int | None:
    """The commit LSN of a change from the replication stream; None for snapshot and move-in rows."""
    value = change.headers.get("lsn")
    return None if value is None else parse_lsn(value)


def change_txids(change: Change | Move) -> list[int]:
    """The transaction ids a change carries (``txids``; the older singular ``txid`` too)."""
    txids = header_list(change.headers, "txids")
    if txids is None:
        single = change.headers.get("txid")
        txids = [] if single is None else [single]
    if any(not isinstance(t, int) or isinstance(t, bool) or t <= 0 for t in txids):
        raise ProtocolError(f"txids must be positive integers, got {txids!r}")
    return txids


def widen_xid(xid: int, reference: int) -> int:
    """The 64-bit xid8 nearest ``reference`` whose low 32 bits are ``xid`` (an xid8 is returned as it is)."""
    if xid >= 2**32:
        return xid
    full = (reference & ~0xFFFFFFFF) | xid
    if full - reference > 2**31:
        full -= 2**32
    elif reference - full > 2**31:
        full += 2**32
    return full


@dataclass(frozen=True)
class Visibility:
    """What a Postgres snapshot sees: transactions below ``xmin``, and below ``xmax`` unless in ``xip``."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any]) -> Visibility:
        """From a ``snapshot-end`` control message; ProtocolError if its fields are not xid8 values."""
        try:
            xip = frozenset(parse_txid(str(x)) for x in header_list(headers, "xip_list") or [])
            return cls(parse_txid(str(headers["xmin"])), parse_txid(str(headers["xmax"])), xip)
        except (KeyError, ValueError) as exc:
            raise ProtocolError(f"snapshot-end must carry xmin, xmax and xip_list as xid8 values ({exc})") from None

    def sees(self, txid: int) -> bool:
        full = widen_xid(txid, self.xmax)
        return full < self.xmin or (full < self.xmax and full not in self.xip)

    def to_json(self) -> dict[str, Any]:
        return {"xmin": str(self.xmin), "xmax": str(self.xmax), "xip_list": sorted(str(x) for x in self.xip)}
