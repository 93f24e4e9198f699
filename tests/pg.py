"""Postgres for tests: one throwaway cluster per test session (``replica.testing.pgcluster``).

Tests that need it are marked ``@pytest.mark.postgres`` and use the ``pg_dsn`` fixture (a new
database per test, in the session's cluster). Without Postgres binaries they skip locally with
a message saying so; in CI (``CI=true``) they fail instead, because there they must run.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replica.testing.postgres.cluster import PgCluster, find_postgres_bin

_names = itertools.count(1)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the Postgres tests must run)", pytrace=False)
    pytest.skip(f"{reason}; install Postgres (initdb, pg_ctl, postgres) to run the Postgres tests")


def require_postgres() -> Path:
    """The directory with the Postgres binaries, and psycopg importable; else skip/fail."""
    try:
        import psycopg  # noqa: F401  # the test extra installs it
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[test]')")
    bindir = find_postgres_bin()
    if bindir is None:
        unavailable("no Postgres binaries on PATH or in /usr/lib/postgresql")
    assert bindir is not None
    return bindir


def new_database(cluster: PgCluster) -> str:
    """A fresh database in ``cluster``: its DSN."""
    return cluster.create_database(f"test_{os.getpid()}_{next(_names)}")


def sql(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement in its own transaction (autocommit); the rows it returned, if any."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def wait_for(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)
