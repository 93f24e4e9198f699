"""Prometheus metrics of a running Replica, fed by its ``SyncEvent``s.

Counters move with events; gauges (freshness, rows, state, file sizes) are read at scrape time,
so they are never stale. Each daemon has its own registry: nothing global, easy to test.

    replica_rows_applied_total{shape,operation}   rows written by published commits (insert/update/delete)
    replica_commits_total{shape}                  published commits (up-to-date boundaries with changes)
    replica_received_bytes_total{shape}           response body bytes
    replica_http_requests_total{shape,status}     responses by HTTP status
    replica_retries_total{shape}                  failures retried with backoff
    replica_refetches_total{shape}                409 must-refetch (or offset out of bounds): resync from scratch
    replica_writes_rejected_total{shape}          upload batches of local writes the server rejected (rolled back)
    replica_writes_pending{shape}                 local writes in the outbox, not yet confirmed (writable shapes)
    replica_oldest_write_seconds{shape}           age of the oldest of them (absent when none waits)
    replica_seconds_since_up_to_date{shape}       since the shape was last known up to date (absent before)
    replica_shape_rows{shape}                     rows in the local table
    replica_shape_state{shape,state}              1 for the shape's current state
    replica_ready                                 1 when /readyz answers 200
    replica_database_bytes, replica_wal_bytes     size of the database file and its -wal file
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from replica.status import STATES, ShapeStatus
from replica.store import outbox
from replica.store.file import connect
from replica.sync.events import SyncEvent

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPERATIONS = ("insert", "update", "delete")


class Metrics:
    """``observe`` every SyncEvent; ``render()`` the text exposition."""

    def __init__(
        self, db_path: Path, status: Callable[[], Sequence[ShapeStatus]], ready: Callable[[], bool]
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series only double the output; the daemon's start time is enough
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["shape"]
        self.rows = Counter(
            "replica_rows_applied", "Rows written by published commits", [*labels, "operation"], registry=self.registry
        )
        self.commits = Counter("replica_commits", "Published commits", labels, registry=self.registry)
        self.bytes = Counter("replica_received_bytes", "Response body bytes received", labels, registry=self.registry)
        self.requests = Counter(
            "replica_http_requests", "HTTP responses by status", [*labels, "status"], registry=self.registry
        )
        self.retries = Counter("replica_retries", "Failures retried with backoff", labels, registry=self.registry)
        self.refetches = Counter(
            "replica_refetches", "Shapes restarted by the server (409 must-refetch)", labels, registry=self.registry
        )
        self.rejected = Counter(
            "replica_writes_rejected", "Upload batches of local writes the server rejected", labels,
            registry=self.registry,
        )
        self.registry.register(_Gauges(db_path, status, ready))
        for state in status():  # every series exists from the start, so rate() works from the first scrape
            self.commits.labels(state.name)
            self.retries.labels(state.name)
            self.refetches.labels(state.name)
            self.bytes.labels(state.name)
            for operation in OPERATIONS:
                self.rows.labels(state.name, operation)

    def observe(self, event: SyncEvent) -> None:
        name = event.name
        if event.kind == "response":
            self.requests.labels(name, str(event.status)).inc()
            self.bytes.labels(name).inc(event.size)
        elif event.kind == "retry":
            self.retries.labels(name).inc()
        elif event.kind == "refetch":
            self.refetches.labels(name).inc()
        elif event.kind == "write_rejected":
            self.rejected.labels(name).inc()
        elif event.kind == "commit" and event.applied is not None and event.applied.published:
            applied = event.applied
            self.commits.labels(name).inc()
            for operation, count in zip(OPERATIONS, (applied.inserted, applied.updated, applied.deleted), strict=True):
                if count:
                    self.rows.labels(name, operation).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Gauges(Collector):
    """Values read when scraped: they come from the Replica's status and the file system."""

    def __init__(self, db_path: Path, status: Callable[[], Sequence[ShapeStatus]], ready: Callable[[], bool]) -> None:
        self._db = db_path
        self._status = status
        self._ready = ready

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        since = GaugeMetricFamily(
            "replica_seconds_since_up_to_date", "Seconds since the shape was last known up to date", labels=["shape"]
        )
        rows = GaugeMetricFamily("replica_shape_rows", "Rows in the shape's local table", labels=["shape"])
        state = GaugeMetricFamily("replica_shape_state", "1 for the shape's current state", labels=["shape", "state"])
        for shape in self._status():
            if shape.last_synced_at is not None:
                since.add_metric([shape.name], max(0.0, now - shape.last_synced_at))
            if shape.rows is not None:
                rows.add_metric([shape.name], shape.rows)
            for name in sorted(STATES):
                state.add_metric([shape.name, name], 1.0 if shape.state == name else 0.0)
        yield since
        yield rows
        yield state
        yield from _backlog(self._db, now)
        ready = float(self._ready())
        yield GaugeMetricFamily("replica_ready", "1 when every shape is up to date and none failed", value=ready)
        yield GaugeMetricFamily("replica_database_bytes", "Size of the database file", value=_size(self._db))
        wal = _size(Path(f"{self._db}-wal"))
        yield GaugeMetricFamily("replica_wal_bytes", "Size of the database's -wal file", value=wal)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # collected lazily: the registry must not call status() at registration


def _backlog(db: Path, now: float) -> Iterator[GaugeMetricFamily]:
    """The outbox per writable shape, read at scrape time (a read-only connection; no writer lock)."""
    pending = GaugeMetricFamily("replica_writes_pending", "Local writes not yet confirmed", labels=["shape"])
    oldest = GaugeMetricFamily("replica_oldest_write_seconds", "Age of the oldest local write waiting",
                               labels=["shape"])
    try:
        conn = connect(db)
    except Exception:  # not created yet: nothing waits
        return
    try:
        for name, backlog in outbox.backlogs(conn).items():
            pending.add_metric([name], backlog.pending)
            if backlog.oldest is not None:
                oldest.add_metric([name], max(0.0, now - backlog.oldest))
    finally:
        conn.close()
    yield pending
    yield oldest


def _size(path: Path) -> float:
    try:
        return float(os.stat(path).st_size)
    except OSError:  # not created yet, or the WAL was checkpointed away
        return 0.0
