"""Benchmark datasets, pre-encoded as Electric responses (bodies + headers) on disk.

Three tables, deterministic for a seed:
  narrow     6 columns, ~150 bytes per message  (int8 pk, text, bool, numeric, timestamptz, float8)
  wide      16 columns, ~1 KB per message       (+ text[], jsonb, uuid, long text, int4, date …)
  realistic 11 columns, ~500 bytes per message  values as a real app's look (issue 17): text with quotes,
            backslashes, unicode and the word NULL; nullable int4 and bool; numeric of varied scale
            up to 30 digits; text[] and int4[] with quoted, NULL and empty elements and empty arrays;
            timestamptz with whole seconds, 3- and 6-digit fractions and non-UTC offsets; jsonb;
            uuid; bytea

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

REALISTIC: dict[str, dict[str, Any]] = {
    "id": {"type": "int8", "pk_index": 0, "not_null": True},
    "body": {"type": "text", "not_null": True},
    "votes": {"type": "int4"},
    "done": {"type": "bool"},
    "amount": {"type": "numeric"},
    "labels": {"type": "text", "dims": 1},
    "counts": {"type": "int4", "dims": 1},
    "at": {"type": "timestamptz"},
    "doc": {"type": "jsonb"},
    "ref": {"type": "uuid"},
    "blob": {"type": "bytea"},
}

DATASETS = {"narrow": NARROW, "wide": WIDE, "realistic": REALISTIC}
_WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore".split()
_START = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def _stamp(n: int) -> str:
    t = _START + timedelta(seconds=n * 37, microseconds=(n * 1237) % 1_000_000)
    return t.isoformat(" ", "microseconds").removesuffix("+00:00") + "+00"


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def row(dataset: str, n: int, rng: random.Random) -> dict[str, str | None]:
    """Row ``n`` of ``dataset`` in Postgres text form, as Electric sends it."""
    if dataset == "realistic":
        return _realistic(n, rng)
    if dataset == "narrow":
        return {
            "id": str(n),
            "name": f"user {n} {rng.choice(_WORDS)}",
            "active": "true" if n % 3 else "false",
            "amount": None if n % 17 == 0 else f"{rng.randint(0, 999999) / 100:.2f}",
            "updated_at": _stamp(n),
            "score": repr(round(rng.random() * 100, 4)),
        }
    if dataset != "wide":
        raise ValueError(f"unknown dataset {dataset!r}")
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


# Text as apps hold it: quotes, backslashes, unicode (2-, 3- and 4-byte UTF-8), the word NULL, newlines, tabs.
_ODD_TEXT = ['say "hi"', "C:\\temp\\new", "naïve café", "日本語テキスト", "emoji 🎉 ok", "NULL", "null", "",
             "line one\nline two", "tab\there", "{braces}", "a,b,c", "it's", "  padded  ", "back\\slash \"both\""]
# text[] elements: plain words, and every case Postgres' array output quotes (array_out): empty, the word
# NULL in any case, the delimiter, braces, quotes, backslashes, whitespace.
_ELEMENTS = [*_WORDS[:8], "", "NULL", "null", "a,b", '"quoted"', "back\\slash", "{x}", "two words", "café", "日本",
             "tab\tin", "🎉"]
_OFFSETS = ["+00", "+00", "+00", "+05:30", "-08", "-07", "+01", "+09", "-03:30", "+05:45"]


def _array(items: list[str | None]) -> str:
    """``items`` as Postgres writes an array literal (array_out's quoting; None is an unquoted NULL)."""
    out = []
    for item in items:
        if item is None:
            out.append("NULL")
        elif item == "" or item.upper() == "NULL" or any(c in item for c in '{},"\\ \t\n\r\v\f'):
            out.append('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            out.append(item)
    return "{" + ",".join(out) + "}"


def _pg_stamp(rng: random.Random, n: int) -> str:
    """A timestamptz as Postgres prints it: trailing fraction zeros dropped, offset +HH or +HH:MM."""
    t = _START + timedelta(seconds=n * 37 + rng.randint(0, 86_400))
    kind = n % 3
    micros = 0 if kind == 0 else rng.randint(0, 999) * 1000 if kind == 1 else rng.randint(0, 999_999)
    fraction = f".{micros:06d}".rstrip("0") if micros else ""
    return t.strftime("%Y-%m-%d %H:%M:%S") + fraction.rstrip(".") + rng.choice(_OFFSETS)


def _numeric(rng: random.Random) -> str:
    digits = rng.randint(1, 30)
    scale = rng.randint(0, min(digits, 12))
    text = str(rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)).rjust(scale + 1, "0")
    sign = "-" if rng.random() < 0.2 else ""
    return sign + (text[: len(text) - scale] + "." + text[len(text) - scale:] if scale else text)


def _realistic(n: int, rng: random.Random) -> dict[str, str | None]:
    body = f"{_text(rng, rng.randint(3, 25))} {rng.choice(_ODD_TEXT)} #{n}"
    labels: list[str | None] = [None if rng.random() < 0.1 else rng.choice(_ELEMENTS) for _ in range(rng.randint(0, 6))]
    counts: list[str | None] = [None if rng.random() < 0.1 else str(rng.randint(-50_000, 2**31 - 1))
                                for _ in range(rng.randint(0, 5))]
    ref = f"{rng.getrandbits(128):032x}"
    doc = {"n": n, "kind": rng.choice("xyz"), "tags": rng.sample(_WORDS, k=n % 3), "price": rng.randint(0, 10**6) / 100,
           "note": rng.choice(_ODD_TEXT), "nested": {"ok": n % 2 == 0, "at": None}}
    return {
        "id": str(n),
        "body": body,
        "votes": None if n % 7 == 0 else str(rng.randint(-1000, 2**31 - 1)),
        "done": None if n % 11 == 0 else rng.choice(["true", "false"]),
        "amount": None if n % 13 == 0 else _numeric(rng),
        "labels": None if n % 17 == 0 else _array(labels),
        "counts": None if n % 19 == 0 else _array(counts),
        "at": None if n % 23 == 0 else _pg_stamp(rng, n),
        "doc": None if n % 29 == 0 else json.dumps(doc, ensure_ascii=False),  # jsonb prints ", " and ": "
        "ref": f"{ref[:8]}-{ref[8:12]}-4{ref[13:16]}-a{ref[17:20]}-{ref[20:]}",
        "blob": None if n % 31 == 0 else "\\x" + rng.randbytes(rng.randint(0, 24)).hex(),
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
