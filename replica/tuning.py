"""Process-wide settings for a process that is mostly replica: the CLI and the daemon apply them.

They change what the whole process shares (glibc's allocator, SQLite's global configuration) or
reach into private attributes of httpx's and asyncio's internals, so the library never applies
them on its own: an app that embeds replica may call ``tune_process()`` itself, first thing, if
it owns its process in the same way.
"""

from __future__ import annotations

import ctypes

import apsw

__all__ = ["large_reads", "tune_process"]


_large_reads = False


def large_reads() -> bool:
    """True once ``tune_process`` asked for large socket reads (``replica.sync.http``)."""
    return _large_reads


def tune_process() -> dict[str, bool]:
    """Apply each setting where it is safe; says which took effect.

    ``large_socket_reads``: HTTP clients made from now on read plain-TCP responses ~1 MiB at a
    time rather than 64-256 KiB (``replica.sync.http``). httpx and asyncio have no public knob
    for it, so it sets private attributes where they are found; per-read overhead in httpcore,
    h11 and anyio was ~35 ms of CPU per ~10 MB chunk, 14-24 ms with it.

    ``big_buffers_to_os``: glibc only. Allocations of 1 MiB and more always use mmap, so they go
    back to the OS when freed. By default glibc raises that threshold after the first big free,
    and the ~10 MB response bodies then fragment the heap: peak RSS of a 100k-row wide sync was
    153 MB, 110 MB with this.

    ``freed_heap_kept``: glibc only. Up to 16 MiB of freed memory at the top of a heap stays
    mapped for the next allocation, rather than going back to the OS once 128 KiB are free. A
    sync allocates and frees ~1 MiB read buffers and conversion pieces all the time, and each
    fresh page is a fault the kernel serves and zeroes: a 1M-row narrow sync took 250k page
    faults and ~7 % more CPU without this, 85k with it, for ~15 MB more peak RSS.

    ``sqlite_memstatus_off``: SQLite keeps memory statistics behind one process-wide mutex that
    every allocation takes; the two threads converting a snapshot (replica.scratch) contend for
    it. Without it, converting a 100k-row wide snapshot took 0.65-0.73 s instead of 0.43-0.44 s.
    It loses ``apsw.memory_used()`` and the soft heap limit, and it needs SQLite restarted, so it
    is applied only while no apsw connection is open and SQLite holds no memory.

    ``open_files_at_hard_limit``: each shape holds a long-poll, so a connection and a file
    descriptor; a daemon of 1,000 shapes held 1,011. The soft limit (often 1,024) is raised to the
    hard limit (65,536 if that is unlimited), as servers that hold many connections do; the hard
    limit is the administrator's.
    """
    global _large_reads
    _large_reads = True
    return {
        "large_socket_reads": True,
        "big_buffers_to_os": _mallopt(_M_MMAP_THRESHOLD, 1 << 20),
        "freed_heap_kept": _mallopt(_M_TRIM_THRESHOLD, 16 << 20),
        "sqlite_memstatus_off": _sqlite_memstatus_off(),
        "open_files_at_hard_limit": _open_files_at_hard_limit(),
    }


OPEN_FILES_UNLIMITED = 65536  # the soft open-files limit asked for when the hard one is unlimited


def _open_files_at_hard_limit() -> bool:
    try:
        import resource
    except ImportError:  # not POSIX
        return False
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # an unlimited hard limit is above what the kernel allows a soft one to be
    target = OPEN_FILES_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return False
    return True


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def _mallopt(param: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))  # 1 on success
    except (OSError, AttributeError):
        return False  # not glibc: nothing to tune


_memstatus_off = False


def _sqlite_memstatus_off() -> bool:
    global _memstatus_off
    if _memstatus_off:
        return True
    if apsw.memory_used() != 0:  # SQLite counts every byte it holds: something is open
        return False
    try:
        apsw.shutdown()
        apsw.config(apsw.SQLITE_CONFIG_MEMSTATUS, 0)
    except apsw.Error:  # apsw refuses to shut SQLite down while any connection is open
        return False
    finally:
        apsw.initialize()  # harmless if SQLite never shut down
    _memstatus_off = True
    return True
