"""What ``--once`` gives scripts (``replica sync`` and ``replica run``): a deadline
(``--timeout``) whose message names each unfinished shape's last error, one summary line per
shape on success, and no database left behind by a run that committed nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from replica.cli.status import read_status
from replica.errors import ConfigError, ReplicaError
from replica.status import ShapeStatus
from replica.store.discard import discard_if_unused
from replica.sync import SyncEvent

__all__ = ["OnceWatch", "check_timeout", "discarding", "seconds"]


def seconds(text: str) -> float:
    """argparse type of ``--timeout``: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def check_timeout(args: argparse.Namespace) -> None:
    """``--timeout`` bounds the wait for the first up-to-date, which only ``--once`` waits for."""
    if args.timeout is not None and not args.once:
        raise ConfigError(
            "--timeout needs --once: it bounds the wait for the first up-to-date; "
            "without --once replica follows the log until stopped"
        )


class OnceWatch:
    """Hears the sync loop's events (``observe``) and words what a ``--once`` run ends with."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._reached: dict[str, float] = {}
        self._errors: dict[str, str] = {}
        self._states: dict[str, str] = {}  # as the sync loop last set it (a run that ends says "stopped")

    def start(self) -> None:
        """The sync begins now (once the event loop runs: importing its backend is not syncing)."""
        self.started = time.monotonic()

    def observe(self, event: SyncEvent) -> None:
        if event.kind == "retry" and event.error:
            self._errors[event.name] = event.error
        elif event.kind == "state" and event.shape is not None:
            self._states[event.name] = event.shape.state
            if event.shape.state == "live":
                self._reached.setdefault(event.name, time.monotonic())

    def summary(self, db: Path, names: Sequence[str]) -> list[str]:
        """``items: 1,000 rows, 0.4 s, handle …, offset …`` per shape, as committed in ``db``."""
        try:
            stored = {row["name"].casefold(): row for row in read_status(db)}
        except ReplicaError:  # the sync is done; a summary that cannot be read is not a failure
            stored = {}
        lines = []
        for name in names:
            row = stored.get(name.casefold(), {})
            elapsed = self._reached.get(name, time.monotonic()) - self.started
            rows = row.get("rows")
            lines.append(
                f"{name}: {'?' if rows is None else f'{rows:,}'} row{'' if rows == 1 else 's'}, "
                f"{elapsed:.{2 if elapsed < 1 else 1}f} s, "
                f"handle {row.get('handle') or '-'}, offset {row.get('offset') or '-'}"
            )
        return lines

    def timed_out(self, timeout: float, shapes: Sequence[ShapeStatus]) -> list[str]:
        """One line per shape that had not reached up-to-date, naming its state and last error."""
        lines = []
        for shape in shapes:
            if shape.last_synced_at is not None and shape.state != "error":
                continue
            error = shape.error or self._errors.get(shape.name)
            detail = f"last error: {error}" if error else "no error, still syncing"
            state = self._states.get(shape.name, shape.state)
            lines.append(f"timed out after {timeout:g} s: {shape.name} is not up to date ({state}); {detail}")
        return lines


@contextlib.contextmanager
def discarding(db: Path) -> Iterator[None]:
    """Remove ``db`` on the way out if this block created it and nothing was committed to it
    (refused, timed out, stopped by a signal, or failed): a first run that got nothing leaves no
    file behind. A file that existed before, or that got a commit, always stays."""
    created = not db.exists()
    try:
        yield
    finally:
        if created:
            discard_if_unused(db)
