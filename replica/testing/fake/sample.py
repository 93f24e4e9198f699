"""The sample dataset: ``public.items`` with columns of many types, deterministic for a seed."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from replica.testing.fake.service import FakeElectric

__all__ = ["SAMPLE_COLUMNS", "sample_fake", "sample_row"]

SAMPLE_COLUMNS: dict[str, dict[str, Any]] = {
    "id": {"type": "int8", "pk_index": 0, "not_null": True},
    "title": {"type": "text", "not_null": True},
    "done": {"type": "bool", "not_null": True},
    "price": {"type": "numeric", "precision": 10, "scale": 2},
    "tags": {"type": "text", "dims": 1},
    "created_at": {"type": "timestamptz"},
    "payload": {"type": "jsonb"},
    "rating": {"type": "float8"},
    "owner": {"type": "uuid"},
}

_WORDS = ["alpha", "beta", "gamma", "delta", "ünïcödé", 'say "hi"', "a,b", "back\\slash", "NULL", "", "{braces}"]
_START = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def pg_array(elements: list[str | None]) -> str:
    """A one-dimensional Postgres array literal, quoting elements as Postgres prints them."""

    def element(text: str | None) -> str:
        if text is None:
            return "NULL"
        if text == "" or text.upper() == "NULL" or any(c in text for c in ',"\\{} '):
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return text

    return "{" + ",".join(element(e) for e in elements) + "}"


def sample_row(n: int, rng: random.Random) -> dict[str, str | None]:
    """Row ``n`` of the sample table (Postgres text encodings, as Electric sends them)."""
    created = _START + timedelta(seconds=n * 37, microseconds=(n * 1237) % 1_000_000)
    stamp = created.isoformat(" ", "microseconds").removesuffix("+00:00").rstrip("0").rstrip(".")
    owner = f"{rng.getrandbits(128):032x}"
    # jsonb text is normalised: ", " and ": " separators, keys ordered by length then name
    payload = f'{{"n": {n}, "kind": "{rng.choice("xyz")}", "nested": {{"ok": {str(n % 2 == 0).lower()}}}}}'
    return {
        "id": str(n),
        "title": f"item {n} {rng.choice(_WORDS)}",
        "done": "t" if n % 3 == 0 else "f",
        "price": None if n % 17 == 0 else f"{rng.randint(0, 99999) / 100:.2f}",
        "tags": None if n % 13 == 0 else pg_array(rng.sample(_WORDS, k=n % 4)),
        "created_at": None if n % 29 == 0 else stamp + "+00",
        "payload": payload,
        "rating": rng.choice(["4.5", "0", "-1.25", "3.141592653589793", "NaN", "Infinity", "-Infinity", None]),
        # a version-4 UUID
        "owner": f"{owner[:8]}-{owner[8:12]}-4{owner[13:16]}-{'89ab'[int(owner[16], 16) % 4]}{owner[17:20]}-{owner[20:]}",
    }


def sample_fake(rows: int = 1000, **kw: Any) -> FakeElectric:
    """A FakeElectric holding ``public.items`` with ``rows`` rows (ids 1..rows), deterministic for
    ``seed``; other keyword arguments go to FakeElectric."""
    fake = FakeElectric(**kw)
    rng = random.Random(kw.get("seed", 0))
    fake.create_table("items", SAMPLE_COLUMNS, [sample_row(n, rng) for n in range(1, rows + 1)])
    return fake
