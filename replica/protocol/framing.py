"""Cutting a response body, a JSON array of messages, into runs of whole messages.

A snapshot body is ~10 MB. Both its validation (replica.inserts) and its conversion
(replica.scratch) work on it a run at a time, so that what they build for one run is freed
before the next: a ~10 MB body's objects are ~5x its size, and memory that size is a fresh
mmap for the kernel to fault in and zero on every body.

The cut is a guess that cannot misread. It goes at the first ``},{"`` (JSON whitespace allowed
around the comma) from a target offset on. Between two elements of the array is the only place
where that text leaves valid JSON on both sides: inside a string the run before the cut ends in
an unterminated string, and deeper in the structure its brackets do not balance. So if every run
is valid JSON on its own, the runs are the body's elements, in order; if one is not, the caller
reads the body whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["pieces", "run_bytes", "run_text", "split"]

# JSON whitespace only: a vertical tab between elements is invalid JSON, and must stay so in a run.
_BOUNDARY = re.compile(rb'}[ \t\n\r]*,[ \t\n\r]*{[ \t\n\r]*"')  # Electric sends "},{", json.dumps "}, {"


def split(body: bytes, parts: int, min_part: int) -> list[tuple[int, int]]:
    """Byte ranges cutting ``body`` into about ``parts`` runs, each cut at the first boundary
    after its target; one run if ``body`` is shorter than ``parts * min_part`` bytes."""
    count = parts if len(body) >= min_part * parts else 1
    return _runs(body, 0, len(body), [len(body) * i // count for i in range(1, count)])


def pieces(body: bytes, start: int, end: int, size: int) -> list[tuple[int, int]]:
    """``body[start:end]``, a run from ``split`` (or the whole body), cut into runs of about ``size`` bytes."""
    return _runs(body, start, end, range(start + size, end, size))


def _runs(body: bytes, start: int, end: int, targets: Iterable[int]) -> list[tuple[int, int]]:
    runs = []
    for target in targets:
        found = _BOUNDARY.search(body, max(start, target), end)  # the first "},{" from the target on
        if found is None:
            break
        runs.append((start, found.start() + 1))
        start = body.index(b"{", found.start())  # the next run starts at its "{"
    return [*runs, (start, end)]


def run_bytes(body: bytes, start: int, end: int) -> bytes:
    """A run of ``body`` as a JSON array of its own: brackets added where a cut removed them."""
    if start == 0 and end == len(body):
        return body
    return b"".join((b"[" if start else b"", memoryview(body)[start:end], b"]" if end < len(body) else b""))


def run_text(body: bytes, start: int, end: int) -> str:
    """``run_bytes`` as text (what SQLite binds); raises UnicodeDecodeError for invalid UTF-8."""
    return str(run_bytes(body, start, end), "utf-8")
