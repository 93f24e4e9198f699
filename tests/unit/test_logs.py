"""Daemon logging: redaction of secrets, failures logged once then summarised, progress lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import anyio
import httpx
import pytest

from replica import Backoff, Replica, Shape, SyncEvent
from replica.cli.logs import FailureLog, Progress, setup_logging
from replica.redaction import Redactor
from replica.testing import FakeElectric, Fault

QUICK = Backoff(initial=0.001, cap=0.01)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_redactor_removes_known_secrets_and_secret_parameters() -> None:
    redact = Redactor(["canary-token", "abc"])  # too short to be a secret worth hiding
    text = redact("GET http://h/v1/shape?table=x&secret=s3&api_secret=t4 Bearer canary-token abc")
    assert text == "GET http://h/v1/shape?table=x&secret=[redacted]&api_secret=[redacted] Bearer [redacted] abc"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_line_is_redacted_including_tracebacks(stream: io.StringIO, fmt: str) -> None:
    redact = Redactor(["canary-9"])
    setup_logging(redact, fmt=fmt, level="info", stream=stream)
    log = logging.getLogger("anything.at.all")
    log.info("token %s", "canary-9")
    try:
        raise ValueError("bad canary-9")
    except ValueError:
        log.exception("failed with url http://h/?secret=canary-9")
    out = stream.getvalue()
    assert "canary" not in out and out.count("[redacted]") >= 3
    if fmt == "json":
        lines = [json.loads(line) for line in out.splitlines()]
        assert [line["level"] for line in lines] == ["info", "error"] and "exception" in lines[1]


def test_the_sync_loops_retry_warnings_give_way_to_the_failure_log(stream: io.StringIO, tmp_path: Any) -> None:
    """A real Replica retries five 503s; the daemon's logging shows the failure once and its recovery."""
    fake = FakeElectric(long_poll_timeout=0.2)
    fake.create_table("items", {"id": {"type": "int4", "pk_index": 0, "not_null": True}})
    fake.faults.add(Fault("status", status=503, times=5))
    setup_logging(Redactor(), stream=stream)
    failures = FailureLog()

    def observe(event: SyncEvent) -> None:  # what the daemon does with these events
        if event.kind == "retry":
            failures.failed(event.name, event.error or "")
        elif event.kind == "state" and event.shape is not None and event.shape.state == "live":
            failures.recovered(event.name)

    retries: list[logging.LogRecord] = []
    counter = logging.Handler()
    counter.emit = retries.append  # type: ignore[method-assign]
    logging.getLogger("replica.retry").addHandler(counter)
    replica = Replica(tmp_path / "a.db", "http://fake/v1/shape", Shape("items"), observer=observe, backoff=QUICK,
                      transport=httpx.MockTransport(fake.handler))
    try:
        anyio.run(partial(replica.run, once=True))
    finally:
        logging.getLogger("replica.retry").removeHandler(counter)
    assert len(retries) == 5  # the sync loop did warn every time…
    lines = stream.getvalue().splitlines()
    assert not [line for line in lines if "(retry " in line]  # …but not on the daemon's stream,
    assert len([line for line in lines if "503" in line and "retrying with backoff" in line]) == 1  # once,
    assert lines[-1].endswith("shape items: recovered after 5 errors")  # then its recovery


def test_a_failure_is_logged_once_then_summarised_then_recovered(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    failures = FailureLog(interval=60, clock=clock)
    caplog.set_level(logging.INFO, logger="replica.daemon")
    for second in range(0, 150, 5):  # 30 errors over 150 s
        clock.now = second
        failures.failed("items", f"503 #{second}")
    failures.recovered("items")
    failures.recovered("items")  # nothing more to say
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("shape items: 503 #0; retrying")
    assert messages[1:3] == ["shape items: still failing after 13 errors; last: 503 #60",
                             "shape items: still failing after 25 errors; last: 503 #120"]
    assert messages[3:] == ["shape items: recovered after 30 errors"]


def test_progress_reports_rows_bytes_and_rate_per_shape() -> None:
    clock = Clock()
    progress = Progress(("items", "orders"), clock=clock)
    clock.now = 2.0
    progress.received("items", 3_000_000)
    progress.rows("items", 10_000)
    progress.rows("orders", 50)
    progress.reached("orders")
    assert not progress.finished
    assert progress.line() == "items 10,000 rows 3.0 MB 5,000 rows/s | orders done 50 rows 0 B in 2.0 s"
    progress.reached("items", failed=True)
    assert progress.finished and progress.line().startswith("items failed after 10,000 rows")


def test_progress_of_many_shapes_is_one_summary_naming_the_first_few_left() -> None:
    clock = Clock()
    names = tuple(f"s{i}" for i in range(1, 1001))
    progress = Progress(names, clock=clock)
    for i, name in enumerate(names, 1):
        progress.rows(name, 1)
        progress.received(name, 275)
        if i <= 995:
            progress.reached(name, failed=i == 7)
    clock.now = 13.0
    line = progress.line()
    assert line == "1,000 shapes: 994 done, 1 failed (s7), 5 syncing (s996, s997, s998, …); 1,000 rows 275.0 kB in 13.0 s"
    for name in names[995:]:
        progress.reached(name)
    assert progress.finished
    assert progress.line() == "1,000 shapes: 999 done, 1 failed (s7); 1,000 rows 275.0 kB in 13.0 s"


def test_progress_names_every_shape_up_to_the_detail_limit() -> None:
    from replica.cli.logs import DETAIL_LIMIT

    names = tuple(f"s{i}" for i in range(DETAIL_LIMIT))
    line = Progress(names, clock=Clock()).line()
    assert line.count(" | ") == DETAIL_LIMIT - 1 and "shapes:" not in line
    assert Progress((*names, "one_more"), clock=Clock()).line().startswith(f"{DETAIL_LIMIT + 1} shapes: 0 done")
