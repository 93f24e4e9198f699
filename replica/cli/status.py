"""``replica status`` and ``replica reset``: read (or reset) a database's shapes from outside the syncer.

Reading never writes and never takes the writer lock, so it works while ``replica run`` syncs.
It reads through ``replica.connect`` (apsw, read-only): the process that runs this may one day
also run a Store, and two SQLite copies in one process break WAL (README, "Reading the database
while it syncs").

Reset needs the writer lock: a running daemon holds the shape's position in memory and would
write it back at its next commit, so reset refuses while one runs and names the fix.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from replica.errors import ConfigError, ReplicaError, StoreError
from replica.protocol.shape import subquery_tables
from replica.store import Store, outbox, positions
from replica.store.file import LOCK_SUFFIX, connect

__all__ = ["FIELDS", "daemon_view", "read_status", "render_table", "reset_shape", "writer_pid"]

FIELDS = ("name", "state", "rows", "handle", "offset", "last_synced_at", "lag", "error", "staged", "live_mode",
          "write_rejected", "depends_on", "writes_pending", "oldest_write_age", "write_error")
_MAGIC = b"SQLite format 3\x00"


def read_status(db: Path, *, live: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One ``ShapeStatus.to_json()`` per shape (keys ``FIELDS``), sorted by name, plus ``depends_on``:
    the tables a subquery shape's where reads, whose changes move its rows in and out (else ``[]``),
    and its local writes waiting in the outbox: ``writes_pending`` (changes not yet confirmed),
    ``oldest_write_age`` (seconds since the oldest was written, None when none waits) and
    ``write_error`` (why the upload of the oldest batch last failed, if it did).

    ``state`` is the stored state when it is an error, else ``running`` while a writer holds the
    database (or the daemon's own state, from ``live``), else ``stopped``. ``lag`` is the seconds
    since the shape was last known up to date: from ``live`` when given, else since its last
    commit. ``live`` maps a shape name to the daemon's view (``daemon_view``).
    """
    _check_database(db)
    conn = connect(db)
    try:
        known = conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_replica_shapes'").fetchall()
        if not known:
            raise ConfigError(f"database: {db} has no replica bookkeeping (_replica_shapes): not a replica database")
        stored = positions.statuses(conn)
        wheres = {name: json.loads(definition).get("where") if definition else None
                  for name, definition in conn.execute('SELECT "name", "definition" FROM "_replica_shapes"')}
        backlogs = outbox.backlogs(conn)
    finally:
        conn.close()
    running = writer_pid(db) is not None
    now = time.time()
    result = []
    for status in stored:
        view = (live or {}).get(status.name)
        state, error = status.state, status.error
        lag = None if status.last_synced_at is None else round(max(0.0, now - status.last_synced_at), 3)
        live_mode = rejected = None
        if view is not None:
            state, error, live_mode = view.get("state", state), view.get("error"), view.get("live_mode")
            up = view.get("last_up_to_date")
            lag = round(now - up, 3) if isinstance(up, (int, float)) else None
            rejected = view.get("write_rejected")
        elif state != "error":
            state = "running" if running else "stopped"
        row = replace(status, state=state, error=error, lag=lag, live_mode=live_mode, write_rejected=rejected).to_json()
        row["depends_on"] = list(subquery_tables(wheres.get(status.name)))
        backlog = backlogs.get(status.name, outbox.Backlog())
        row["writes_pending"], row["write_error"] = backlog.pending, backlog.error
        row["oldest_write_age"] = None if backlog.oldest is None else round(max(0.0, now - backlog.oldest), 3)
        result.append(row)
    return result


def daemon_view(host: str, port: int, timeout: float = 1.0) -> dict[str, dict[str, Any]] | None:
    """The running daemon's per-shape state from its /readyz, or None if it does not answer."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    url = f"http://[{host}]:{port}/readyz" if ":" in host else f"http://{host}:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:  # 503 still carries the body
        body = exc.read()
    except (OSError, ValueError):
        return None
    try:
        shapes = json.loads(body)["shapes"]
        return {item["name"]: item for item in shapes}
    except (ValueError, KeyError, TypeError):
        return None


def reset_shape(db: Path, name: str) -> int:
    """Forget ``name``'s position so it resyncs from scratch; returns its row count (kept until then).

    Raises ReplicaError when a writer runs or the shape is unknown.
    """
    _check_database(db)
    pid = writer_pid(db)
    if pid is not None:
        raise ReplicaError(_busy(db, pid))
    try:
        store = Store(db)
    except StoreError as exc:
        if "another replica is already writing" in str(exc):  # it started between our check and now
            raise ReplicaError(_busy(db, None)) from None
        raise
    with store:
        known = {status.name: status for status in store.status()}
        matches = [key for key in known if key.casefold() == name.casefold()]  # SQLite names ignore case
        if not matches or not store.reset(matches[0]):
            listed = ", ".join(sorted(known)) or "none"
            raise ReplicaError(f"no shape named {name!r} in {db} (shapes: {listed})")
        return known[matches[0]].rows or 0


def writer_pid(db: Path) -> int | None:
    """The pid holding ``db``'s single-writer lock, if any (0 when held but the pid is unknown).

    Reads /proc/locks on Linux (no lock is taken, so a starting daemon never collides with us).
    Elsewhere returns None: the state shown is then the stored one.
    """
    try:
        info = os.stat(f"{db}{LOCK_SUFFIX}")
        with open("/proc/locks", encoding="ascii") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; blocked waiters have "->" in field 2
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" and fields[5] == device:
            return int(fields[4]) if fields[4].isdigit() else 0
    return None


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The human form of ``replica status``: one line per shape, then its error if any."""
    if not rows:
        return "no shapes synced yet"
    header = ("SHAPE", "STATE", "ROWS", "LAG", "LAST SYNCED", "HANDLE", "OFFSET")
    table = [header]
    for row in rows:
        lag = "-" if row["lag"] is None else f"{row['lag']:.1f}s"
        table.append(
            (row["name"], row["state"], str(row["rows"]), lag, row["last_synced_at"] or "never",
             row["handle"] or "-", row["offset"] or "-")
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table]
    for row in rows:
        if row["error"]:
            lines.append(f"{row['name']}: {row['error']}")
        if row.get("writes_pending"):
            lines.append(f"{row['name']}: {row['writes_pending']} local writes wait to upload, the oldest for "
                         f"{row['oldest_write_age']:.1f}s" + (f" (last failure: {row['write_error']})"
                                                             if row.get("write_error") else ""))
        if row.get("write_rejected"):
            lines.append(f"{row['name']}: the server rejected a batch of local writes: {row['write_rejected']}")
        if row.get("depends_on"):
            lines.append(f"{row['name']}: rows move in and out as {', '.join(row['depends_on'])} change (a subquery)")
        if row.get("live_mode") == "sse-fallback":
            lines.append(f"{row['name']}: long-polling: its SSE streams kept failing (a proxy buffering them?)")
    return "\n".join(lines)


def _check_database(db: Path) -> None:
    try:
        with open(db, "rb") as file:
            magic = file.read(len(_MAGIC))
    except OSError as exc:
        raise ConfigError(f"database: cannot open {db}: {exc.strerror}") from None
    if magic != _MAGIC:
        raise ConfigError(f"database: {db} is not a SQLite database")


def _busy(db: Path, pid: int | None) -> str:
    who = f"replica (pid {pid})" if pid else "another replica"
    return (
        f"{who} is syncing {db}, and reset needs it stopped: stop it (e.g. systemctl stop replica), "
        "run `replica reset` again, then start it; the shape resyncs on start and its rows stay "
        "visible until the new snapshot commits"
    )
