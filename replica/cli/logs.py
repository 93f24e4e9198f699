"""Logging for the daemon: text or JSON lines, secrets redacted, failures summarised, progress.

* Every formatted line goes through a ``replica.redaction.Redactor`` that knows every configured
  secret, whatever logger produced it, so a token cannot leak through an error message, a URL
  or a traceback.
* ``FailureLog`` turns a stream of retries into three kinds of line: the first failure, a
  summary at most every ``interval`` seconds while it lasts, and "recovered after N errors".
* ``Progress`` counts rows, bytes and rate per shape during the initial sync (a summary past
  ``DETAIL_LIMIT`` shapes).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

from replica.redaction import Redactor
from replica.sync.follow import retry_log

__all__ = ["FailureLog", "Progress", "setup_logging"]

log = logging.getLogger("replica.daemon")

DETAIL_LIMIT = 10  # shapes named one by one in a progress line; past it, a summary


class _Formatter(logging.Formatter):
    def __init__(self, redact: Redactor, as_json: bool, clear_line: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redact = redact
        self._json = as_json
        self._clear = clear_line

    def format(self, record: logging.LogRecord) -> str:
        if not self._json:
            text = self._redact(super().format(record))
            return "\r\x1b[K" + text if self._clear else text  # wipe a progress line drawn before
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = self._redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class _DropRetryWarnings(logging.Filter):
    """The sync loop warns on every retry (``replica.retry``); the daemon summarises them with FailureLog instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != retry_log.name


def setup_logging(
    redact: Redactor, *, fmt: str = "text", level: str = "info", stream: IO[str] | None = None, tty: bool = False
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as redacted text or JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(redact, fmt == "json", clear_line=tty and fmt != "json"))
    handler.addFilter(_DropRetryWarnings())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request at INFO: only worth it when debugging.
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.INFO if level == "debug" else logging.WARNING)
    return handler


@dataclass
class _Failing:
    errors: int = 0
    last_summary: float = 0.0
    last_error: str = ""


class FailureLog:
    """Log a shape's failure once, then at most one summary per ``interval``, then its recovery."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._shapes: dict[str, _Failing] = {}

    def failed(self, name: str, error: str) -> None:
        state = self._shapes.setdefault(name, _Failing())
        state.errors += 1
        state.last_error = error
        now = self._clock()
        if state.errors == 1:
            state.last_summary = now
            log.warning(
                "shape %s: %s; retrying with backoff (repeats are summarised every %g s)", name, error, self.interval
            )
        elif now - state.last_summary >= self.interval:
            state.last_summary = now
            log.warning("shape %s: still failing after %d errors; last: %s", name, state.errors, error)

    def recovered(self, name: str) -> None:
        state = self._shapes.pop(name, None)
        if state is not None and state.errors:
            log.info("shape %s: recovered after %d error%s", name, state.errors, "" if state.errors == 1 else "s")


@dataclass
class _Counts:
    rows: int = 0
    bytes: int = 0
    started: float = 0.0
    done: float | None = None
    failed: bool = False


@dataclass
class Progress:
    """Rows, bytes and rate per shape until each shape first reaches up-to-date."""

    names: tuple[str, ...]
    clock: Callable[[], float] = time.monotonic
    _counts: dict[str, _Counts] = field(default_factory=dict)

    def __post_init__(self) -> None:
        now = self.clock()
        self._counts = {name: _Counts(started=now) for name in self.names}

    def received(self, name: str, size: int) -> None:
        self._counts[name].bytes += size

    def rows(self, name: str, rows: int) -> None:
        self._counts[name].rows = rows

    def reached(self, name: str, *, failed: bool = False) -> None:
        """``name`` is up to date (or, ``failed``, stopped by an error): its count stops."""
        counts = self._counts[name]
        if counts.done is None:
            counts.done = self.clock()
            counts.failed = failed

    @property
    def finished(self) -> bool:
        return all(c.done is not None for c in self._counts.values())

    def line(self) -> str:
        """``items 12,000 rows 3.1 MB 4,000 rows/s | orders done 500 rows``; past ``DETAIL_LIMIT``
        shapes a summary, so a daemon of 1,000 shapes logs a line, not a page, per report."""
        if len(self._counts) > DETAIL_LIMIT:
            return self._summary()
        now = self.clock()
        parts = []
        for name, c in self._counts.items():
            elapsed = max((c.done or now) - c.started, 1e-3)
            if c.failed:
                parts.append(f"{name} failed after {c.rows:,} rows")
            elif c.done is not None:
                parts.append(f"{name} done {c.rows:,} rows {_size(c.bytes)} in {elapsed:.1f} s")
            else:
                parts.append(f"{name} {c.rows:,} rows {_size(c.bytes)} {c.rows / elapsed:,.0f} rows/s")
        return " | ".join(parts)

    def _summary(self) -> str:
        """``1,000 shapes: 990 done, 1 failed (s7), 9 syncing (s991, s992, …); 12,000 rows 3.1 MB in 4.0 s``"""
        done = [n for n, c in self._counts.items() if c.done is not None and not c.failed]
        failed = [n for n, c in self._counts.items() if c.failed]
        syncing = [n for n, c in self._counts.items() if c.done is None]
        counts = self._counts.values()
        elapsed = max((c.done or self.clock()) for c in counts) - min(c.started for c in counts)
        parts = [f"{len(done):,} done"]
        if failed:
            parts.append(f"{len(failed):,} failed ({_names(failed)})")
        if syncing:
            parts.append(f"{len(syncing):,} syncing ({_names(syncing)})")
        rows, size = sum(c.rows for c in counts), sum(c.bytes for c in counts)
        return f"{len(self._counts):,} shapes: {', '.join(parts)}; {rows:,} rows {_size(size)} in {elapsed:.1f} s"


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", …" if len(names) > shown else "")


def _size(count: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000  # type: ignore[assignment]
    return f"{count} B"
