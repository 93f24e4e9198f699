"""Shared fixtures. Keep this file small: one fixture per concept, documented."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from replica.testing import FakeElectric, Server, serve_in_thread

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

ITEMS_COLUMNS = {
    "id": {"type": "int4", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "done": {"type": "bool"},
    "tags": {"type": "text", "dims": 1},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> FakeElectric:
    """A FakeElectric (2 s long-poll) with ``public.items`` (id int4 pk, title, done bool, tags text[])
    holding rows 1 and 2."""
    fake = FakeElectric(long_poll_timeout=2.0)
    fake.create_table(
        "items",
        ITEMS_COLUMNS,
        rows=[
            {"id": "1", "title": "a", "done": "f", "tags": "{x,y}"},
            {"id": "2", "title": "b", "done": "true", "tags": None},
        ],
    )
    return fake


@pytest.fixture
def server(fake: FakeElectric) -> Iterator[Server]:
    """``fake`` on a real loopback port, served from a background thread (usable from sync tests,
    async tests and subprocesses alike)."""
    with serve_in_thread(fake) as running:
        yield running
