"""How long to wait before resending: capped exponential backoff with full jitter.

``delay = max(retry_after, uniform(0, min(cap, initial * multiplier**attempt)))`` — full jitter
spreads many clients apart after an outage; a server's Retry-After is a floor, never shortened.
Defaults match Electric's official client (1 s doubling to a 32 s cap). ``Backoff.testing()``
turns every wait into zero for test suites.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

__all__ = ["Backoff", "parse_retry_after"]

RETRY_AFTER_CAP = 3600.0  # a misconfigured server must not park us for days

_testing = False


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    multiplier: float = 2.0
    cap: float = 32.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if _testing:
            return 0.0
        ceiling = min(self.cap, self.initial * self.multiplier ** min(attempt, 64))
        wait = self.rng.uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, RETRY_AFTER_CAP))
        return wait

    @staticmethod
    def testing_now() -> bool:
        """True inside ``Backoff.testing()`` (a child sync process inherits it)."""
        return _testing

    @staticmethod
    @contextmanager
    def testing(enabled: bool = True) -> Iterator[None]:
        """Within this block every delay is zero (for tests)."""
        global _testing
        previous, _testing = _testing, enabled
        try:
            yield
        finally:
            _testing = previous


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from ``now`` (epoch seconds): delta-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return min(max(0.0, float(value)), RETRY_AFTER_CAP)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when - now), RETRY_AFTER_CAP)
