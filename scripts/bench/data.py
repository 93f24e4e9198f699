"""Benchmark datasets, pre-encoded as Electric responses (bodies + headers) on disk.

Two tables, deterministic for a seed:
  narrow  6 columns, ~150 bytes per message  (int8 pk, text, bool, numeric, timestamptz, float8)
  wide   16 columns, ~1 KB per message       (+ text[], jsonb, uuid, long text, int4, date …)

``record(dataset, rows, folder)`` writes the initial-sync log as Electric would serve it: chunks of
~10 MB (ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD's default), snapshot offsets ``0_<n>``, the last
chunk ending with an up-to-date control at offset ``0_inf``, plus ``index.json`` mapping each
request offset to its response. Served by ``static_server.py`` (no work per request).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

CHUNK_BYTES = 10 * 1024 * 1024
HANDLE = "bench-1700000000000000"

NARROW: dict[str, dict[str, Any]] = {
    "id": {"type": "int8", "pk_index": 0, "not_null": True},
    "name": {"type": "text", "not_null": True},
    "active": {"type": "bool", "not_null": True},
    "amount": {"type": "numeric", "precision": 10, "scale": 2},
    "updated_at": {"type": "timestamptz"},
    "score": {"type": "float8"},
}

WIDE: dict[str, dict[str, Any]] = {
    "id": {"type": "int8", "pk_index": 0, "not_null": True},
    "title": {"type": "text", "not_null": True},
    "description": {"type": "text"},
    "notes": {"type": "text"},
    "status": {"type": "text"},
    "tags": {"type": "text", "dims": 1},
    "payload": {"type": "jsonb"},
    "owner": {"type": "uuid"},
    "price": {"type": "numeric", "precision": 12, "scale": 2},
    "quantity": {"type": "int4"},
    "rating": {"type": "float8"},
    "flag": {"type": "bool"},
    "created_at": {"type": "timestamptz"},
    "updated_at": {"type": "timestamptz"},
    "due": {"type": "date"},
    "city": {"type": "text"},
}

DATASETS = {"narrow": NARROW, "wide": WIDE}
_WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore".split()
_START = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def _stamp(n: int) -> str:
    t = _START + timedelta(seconds=n * 37, microseconds=(n * 1237) % 1_000_000)
    return t.isoformat(" ", "microseconds").removesuffix("+00:00") + "+00"


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def row(dataset: str, n: int, rng: random.Random) -> dict[str, str | None]:
    """Row ``n`` of ``dataset`` in Postgres text form, as Electric sends it."""
    if dataset == "narrow":
        return {
            "id": str(n),
            "name": f"user {n} {rng.choice(_WORDS)}",
            "active": "true" if n % 3 else "false",
            "amount": None if n % 17 == 0 else f"{rng.randint(0, 999999) / 100:.2f}",
            "updated_at": _stamp(n),
            "score": repr(round(rng.random() * 100, 4)),
        }
    owner = f"{rng.getrandbits(128):032x}"
    return {
        "id": str(n),
        "title": f"item {n}: {_text(rng, 5)}",
        "description": _text(rng, 60),
        "notes": _text(rng, 25),
        "status": rng.choice(["open", "closed", "pending", "archived"]),
        "tags": "{" + ",".join(rng.sample(_WORDS, k=1 + n % 4)) + "}",
        "payload": json.dumps({"n": n, "kind": rng.choice("xyz"), "nested": {"ok": n % 2 == 0, "v": [1, 2, 3]}}),
        "owner": f"{owner[:8]}-{owner[8:12]}-4{owner[13:16]}-a{owner[17:20]}-{owner[20:]}",
        "price": f"{rng.randint(0, 9999999) / 100:.2f}",
        "quantity": str(rng.randint(0, 10000)),
        "rating": repr(round(rng.random() * 5, 3)),
        "flag": "t" if n % 2 else "f",
        "created_at": _stamp(n),
        "updated_at": _stamp(n + 1000),
        "due": (_START + timedelta(days=n % 3650)).date().isoformat(),
        "city": rng.choice(["Berlin", "Lisbon", "Osaka", "Quito", "Nairobi", "Oslo"]),
    }


def _headers(schema: dict[str, Any], offset: str, up_to_date: bool) -> dict[str, str]:
    headers = {
        "content-type": "application/json; charset=utf-8",
        "electric-handle": HANDLE,
        "electric-offset": offset,
        "electric-schema": json.dumps(schema, separators=(",", ":")),
        "cache-control": "public, max-age=60, stale-while-revalidate=300",
        "access-control-expose-headers": "electric-cursor,electric-handle,electric-has-data,electric-offset,"
        "electric-schema,electric-up-to-date,electric-internal-known-error,retry-after",
    }
    if up_to_date:
        headers["electric-up-to-date"] = ""
        headers["electric-cursor"] = "1000"
    return headers


def record(dataset: str, rows: int, folder: Path, seed: int = 0) -> dict[str, Any]:
    """Write the pre-encoded initial-sync log of ``rows`` rows; returns the index (also saved)."""
    folder.mkdir(parents=True, exist_ok=True)
    schema = DATASETS[dataset]
    rng = random.Random(seed)
    relation = f'"headers":{{"operation":"insert","relation":["public","{dataset}"]}}'
    responses: dict[str, dict[str, Any]] = {}
    previous = "-1"
    piece: list[bytes] = []
    size = 0
    chunk = 0
    total = 0

    def flush(last: bool) -> None:
        nonlocal previous, piece, size, chunk, total
        if last:
            piece.append(b'{"headers":{"control":"up-to-date","global_last_seen_lsn":"24000000"}}')
        offset = "0_inf" if last else f"0_{chunk}"
        body = b"[" + b",".join(piece) + b"]"
        path = folder / f"chunk-{chunk:04d}.json"
        path.write_bytes(body)
        total += len(body)
        responses[previous] = {"headers": _headers(schema, offset, last), "body": path.name}
        previous, piece, size = offset, [], 0
        chunk += 1

    for n in range(1, rows + 1):
        value = json.dumps(row(dataset, n, rng), ensure_ascii=False, separators=(",", ":"))
        message = f'{{"key":"\\"public\\".\\"{dataset}\\"/\\"{n}\\"","value":{value},{relation}}}'.encode()
        piece.append(message)
        size += len(message) + 1
        if size >= CHUNK_BYTES and n < rows:
            flush(False)
    flush(True)
    index = {
        "dataset": dataset,
        "rows": rows,
        "schema": schema,
        "bytes": total,
        "handle": HANDLE,
        "responses": responses,
    }
    (folder / "index.json").write_text(json.dumps(index))
    return index


def bodies(folder: Path) -> list[tuple[dict[str, str], Path]]:
    """The recorded responses in request order: (headers, body path)."""
    index = json.loads((folder / "index.json").read_text())
    out = []
    offset = "-1"
    while offset in index["responses"]:
        entry = index["responses"][offset]
        out.append((entry["headers"], folder / entry["body"]))
        offset = entry["headers"]["electric-offset"]
    return out
