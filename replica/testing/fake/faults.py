"""Fault injection for FakeElectric: what can go wrong between Electric and a client.

Faults apply to ``/v1/shape`` requests only (never to ``/v1/health`` or OPTIONS). Each fault
fires ``times`` times, on requests of its ``phase`` (or any request when ``phase`` is None),
in the order the faults were added.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

__all__ = ["FAULT_KINDS", "PHASES", "SSE_FAULTS", "Fault", "FaultPlan", "fits"]

#: Faults of a live Server-Sent Events answer; they fire only on SSE requests.
SSE_FAULTS = frozenset({"sse_cut", "sse_buffer", "sse_silent"})
#: Faults of a whole JSON body; an SSE request never draws them.
_BODY_FAULTS = frozenset({"reset", "truncate", "malformed", "stale"})
FAULT_KINDS = frozenset(
    {"status", "reset", "truncate", "stall", "malformed", "drop_headers", "stale", "must_refetch", *SSE_FAULTS}
)
#: initial: offset=-1 or now; snapshot: non-live, offset 0_n; catchup: non-live after the snapshot;
#: live: live=true.
PHASES = frozenset({"initial", "snapshot", "catchup", "live"})


@dataclass(frozen=True)
class Fault:
    """One kind of failure. Kinds:

    ``status``
        An error response with ``status`` (default 503; 429 and other 5xx make sense) and, when
        ``retry_after`` is set, a ``retry-after`` header (whole seconds). Body
        ``{"message": …}``, ``cache-control: no-store``.
    ``reset``
        The connection is reset mid-body: the socket server sends the headers and part of the
        body, then an RST. ``fake.handler`` raises ``httpx.ReadError``; ``fake.respond``,
        which cannot reset anything, raises ``ConnectionResetError``.
    ``truncate``
        A 200 whose body is cut short: the socket server announces the whole length, sends half
        and closes the connection cleanly; ``handler`` and ``respond`` return a complete 200
        response with half the body (invalid JSON).
    ``stall``
        The response is held for ``seconds`` (default 30) before it is sent, to outlast a
        client's read timeout. ``respond`` cannot wait and answers normally.
    ``malformed``
        A 200 with the real headers but a body that is not valid JSON.
    ``drop_headers``
        The real response without the named ``headers`` (default ``("electric-offset",)``),
        as a proxy that strips them would send.
    ``stale``
        An earlier 200 whose ``electric-handle`` has since expired is replayed, as a CDN would
        after a rotation: preferably the one cached for the same shape and offset. Only fires
        (and is only used up) when such a response exists.
    ``must_refetch``
        The requested shape is expired now (as an eviction would) and the answer is a 409 whose
        ``electric-handle`` header names the new handle (``handle=True``) or is absent
        (``handle=False``, as behind a header-stripping proxy).

    Live Server-Sent Events answers (``live_sse=true``) draw ``status``, ``stall``,
    ``drop_headers``, ``must_refetch`` and these, never the whole-body kinds above:

    ``sse_cut``
        The stream is cut inside its first event (half of it sent, then the connection closes
        without ending the chunked body), as a dropped connection would. ``handler`` raises
        ``httpx.RemoteProtocolError`` there.
    ``sse_buffer``
        A buffering proxy: the headers go out at once, every event and keep-alive is held until
        the server ends the stream (``sse_timeout``), then all of it is sent together.
    ``sse_silent``
        The headers go out, then nothing at all, not even keep-alives, until the stream's end.
    """

    kind: str
    _: KW_ONLY
    status: int = 503
    retry_after: float | None = None
    times: int = 1
    phase: str | None = None
    seconds: float = 30.0
    headers: tuple[str, ...] = ("electric-offset",)
    handle: bool = True

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if self.phase is not None and self.phase not in PHASES:
            raise ValueError(f"unknown phase {self.phase!r}; expected None or one of {sorted(PHASES)}")
        if self.times < 1:
            raise ValueError("times must be at least 1")
        if not 400 <= self.status <= 599:
            raise ValueError(f"status must be an error status (400-599), got {self.status}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if self.seconds < 0:
            raise ValueError("seconds must not be negative")
        if isinstance(self.headers, str):
            object.__setattr__(self, "headers", (self.headers,))
        object.__setattr__(self, "headers", tuple(h.lower() for h in self.headers))


def fits(fault: Fault, *, sse: bool) -> bool:
    """Whether ``fault`` may fire on a request that is (``sse``) or is not a live SSE request."""
    if fault.kind in SSE_FAULTS:
        return sse
    return not (sse and fault.kind in _BODY_FAULTS)


class FaultPlan:
    """The faults still to fire, thread-safe. ``fired`` records every fault that fired, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[list[Fault | int]] = []  # [fault, remaining]
        self.fired: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        """Schedule ``fault``; returns it."""
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, got {type(fault).__name__}")
        with self._lock:
            self._pending.append([fault, fault.times])
        return fault

    def clear(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._pending.clear()

    @property
    def pending(self) -> list[Fault]:
        """Faults that have not fired their ``times`` yet."""
        with self._lock:
            return [entry[0] for entry in self._pending]  # type: ignore[misc]

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def take(self, phase: str, applicable: Callable[[Fault], bool] = lambda fault: True) -> Fault | None:
        """The first pending fault for ``phase`` that ``applicable`` accepts, used up once."""
        with self._lock:
            for entry in self._pending:
                fault, remaining = entry
                assert isinstance(fault, Fault) and isinstance(remaining, int)
                if fault.phase not in (None, phase) or not applicable(fault):
                    continue
                if remaining <= 1:
                    self._pending.remove(entry)
                else:
                    entry[1] = remaining - 1
                self.fired.append(fault)
                return fault
        return None
