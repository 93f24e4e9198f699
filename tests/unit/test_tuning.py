"""Process tuning (replica.tuning): applied only where safe, each case in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run(code: str, tmp_path: Path) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and SQLite restart: Linux only")
def test_a_fresh_process_is_tuned_and_sqlite_works_on(tmp_path: Path) -> None:
    out = run("""
        import json, apsw
        from replica.tuning import tune_process
        first = tune_process()
        conn = apsw.Connection("probe.db")
        conn.execute("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        counted = apsw.memory_used()
        again = tune_process()  # must not restart SQLite under the open connection
        print(json.dumps({"first": first, "again": again, "counted": counted,
                          "rows": conn.execute("SELECT count(*) FROM t").fetchone()[0]}))
    """, tmp_path)
    tuned = {"large_socket_reads": True, "big_buffers_to_os": True, "freed_heap_kept": True,
             "sqlite_memstatus_off": True, "open_files_at_hard_limit": True}
    assert out["first"] == out["again"] == tuned
    assert out["counted"] == 0  # SQLite no longer counts: the statistics are off
    assert out["rows"] == 1


FREE_AND_MEASURE = """
    import ctypes, json, os
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    statm, rss = os.open("/proc/self/statm", os.O_RDONLY), [bytearray(200), bytearray(200)]
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD at glibc's default, which glibc raises after big frees
    tune()
    blocks = [libc.malloc(512 * 1024) for _ in range(16)]  # 8 MiB under the mmap threshold: the heap's top
    for block in blocks:
        ctypes.memset(block, 1, 512 * 1024)
    os.preadv(statm, [rss[0]], 0)  # into buffers made before: nothing may land above the blocks
    for block in reversed(blocks):
        libc.free(block)
    os.preadv(statm, [rss[1]], 0)
    held, left = (int(bytes(b).split()[1]) * os.sysconf("SC_PAGE_SIZE") for b in rss)
    print(json.dumps({"released": held - left}))
"""


def released(tune: str, tmp_path: Path) -> int:
    """How many bytes RSS drops when 8 MiB of heap blocks are freed, after ``tune`` defines and runs tune()."""
    released = run(textwrap.dedent(tune) + textwrap.dedent(FREE_AND_MEASURE), tmp_path)["released"]
    assert isinstance(released, int)
    return released


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_heap_memory_stays_mapped_for_reuse(tmp_path: Path) -> None:
    # Freed buffers stay mapped, so the next ones are not fresh pages for the kernel to fault in and zero.
    assert released("from replica.tuning import tune_process as tune", tmp_path) < 1 << 20
    # The mmap threshold alone (the tuning before the trim threshold) gives those pages back.
    alone = released("""
        import ctypes
        def tune():
            ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)
    """, tmp_path)
    assert alone > 6 << 20


def test_the_open_files_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    # a daemon of 1,000 shapes holds ~1,011 descriptors: past a soft limit of 1,024 it would fail
    out = run("""
        import json, resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        from replica import tuning
        tuned = tuning.tune_process()["open_files_at_hard_limit"]
        target = tuning.OPEN_FILES_UNLIMITED if hard == resource.RLIM_INFINITY else hard
        print(json.dumps({"tuned": tuned, "limit": resource.getrlimit(resource.RLIMIT_NOFILE), "hard": hard,
                          "target": target}))
    """, tmp_path)
    assert out["tuned"] is True and out["limit"] == [out["target"], out["hard"]]


def test_sqlite_is_left_alone_while_a_connection_is_open(tmp_path: Path) -> None:
    out = run("""
        import json, apsw
        conn = apsw.Connection("mine.db")
        conn.execute("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        from replica.tuning import tune_process
        tuned = tune_process()
        print(json.dumps({"off": tuned["sqlite_memstatus_off"], "counted": apsw.memory_used() > 0,
                          "rows": conn.execute("SELECT count(*) FROM t").fetchone()[0]}))
    """, tmp_path)
    assert out == {"off": False, "counted": True, "rows": 1}


def test_statistics_turned_off_by_someone_else_are_left_alone(tmp_path: Path) -> None:
    # With counting off, "no memory in use" proves nothing: the open connection below must survive.
    out = run("""
        import json, apsw
        apsw.shutdown(); apsw.config(apsw.SQLITE_CONFIG_MEMSTATUS, 0); apsw.initialize()
        conn = apsw.Connection("mine.db")
        conn.execute("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        from replica.tuning import tune_process
        tuned = tune_process()
        print(json.dumps({"off": tuned["sqlite_memstatus_off"],
                          "rows": conn.execute("SELECT count(*) FROM t").fetchone()[0]}))
    """, tmp_path)
    assert out == {"off": False, "rows": 1}


def test_the_cli_tunes_its_process(tmp_path: Path) -> None:
    out = run("""
        import json, apsw
        from replica.cli import commands as cli
        code = cli.main(["status", "--db", "missing.db"])  # refused (exit 2), after tuning
        conn = apsw.Connection(":memory:")
        print(json.dumps({"code": code, "counted": apsw.memory_used()}))
    """, tmp_path)
    assert out == {"code": 2, "counted": 0}


@pytest.mark.parametrize("limit, warned", [(1024, True), (2 * 500 + 32, False)])
def test_the_daemon_warns_when_its_shapes_may_exceed_the_open_files_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, limit: int, warned: bool
) -> None:
    import resource

    from replica.cli import daemon

    monkeypatch.setattr(resource, "getrlimit", lambda which: (limit, limit))
    with caplog.at_level("WARNING", logger=daemon.log.name):
        daemon._check_open_files(500)
    said = [r.getMessage() for r in caplog.records]
    assert bool(said) is warned, said
    if warned:
        assert "the limit is 1024, and 500 shapes may hold up to 1032 descriptors (532 when idle)" in said[0]
