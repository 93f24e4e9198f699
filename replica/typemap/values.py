"""Postgres text → SQLite values: the converters behind the type map (design.md §5).

Pure (no apsw). ``replica.schema`` picks a converter per column (``scalar_converter``,
``array_converter``, or ``to_float`` for the ``"real"`` override); each takes the text Electric
sent (never None: NULL is handled by the caller) and returns the value to bind, raising
``ValueError`` when the text does not parse as its type. The map is lossless by default:

    int2/int4/int8/oid      INTEGER   (int8 bounds checked)
    float4/float8           REAL      ±Infinity → ±inf; NaN → the TEXT 'NaN' (SQLite binds NaN as NULL);
                                      -0 reads back as 0 (SQLite keeps no sign on zero)
    numeric/money           TEXT      exactly as sent (opt into REAL per column with an override)
    bool                    INTEGER   t/true → 1, f/false → 0
    bytea                   BLOB      from ``\\x<hex>``
    json/jsonb              TEXT      exactly as sent (SQLite's JSON functions read it)
    arrays (dims ≥ 1)       TEXT      a JSON array of converted elements, nested per dimension
    timestamptz/timetz      TEXT      offset written ``+HH:MM`` (SQLite's date functions read it),
                                      timestamptz shifted to UTC so text order is time order
    timestamp/date/time     TEXT      as sent (already readable and ordered)
    anything else           TEXT      as sent (text, varchar, bpchar, uuid, interval, enums, domains…)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from replica.typemap.pgarray import parse_array

__all__ = [
    "BOOL_TYPES",
    "FLOAT_TYPES",
    "INT8_MAX",
    "INT8_MIN",
    "INT_TYPES",
    "JSON_TYPES",
    "SQLValue",
    "array_converter",
    "scalar_converter",
    "to_float",
]

SQLValue = int | float | str | bytes | None

INT_TYPES = frozenset({"int2", "int4", "int8", "oid", "smallint", "integer", "bigint"})
FLOAT_TYPES = frozenset({"float4", "float8", "real", "double precision"})
BOOL_TYPES = frozenset({"bool", "boolean"})
JSON_TYPES = frozenset({"json", "jsonb"})
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1

_INT_RE = re.compile(r"[+-]?\d+")
# Postgres float output: digits, optional fraction, optional exponent (no Python-only forms like "1_0").
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})*")
_TSTZ_RE = re.compile(r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.(\d{1,6}))?)([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?")
_TSTZ_UTC_BODY = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d{1,6})?")
_TIMETZ_RE = re.compile(r"(\d\d:\d\d(?::\d\d(?:\.\d+)?)?)([+-]\d\d)(?::?(\d\d))?")


# --- scalar converters: Postgres text → SQLite value (raise ValueError when the text is bad) ---


def _to_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    # Fast path: Postgres prints integers canonically, which is exactly what str() gives back.
    if value is None or str(value) != text:
        if not _INT_RE.fullmatch(text):
            raise ValueError("not an integer")
        value = int(text)
    if not INT8_MIN <= value <= INT8_MAX:
        raise ValueError("outside the 64-bit integer range")
    return value


def to_float(text: str) -> float | str:
    if text == "NaN":
        return "NaN"  # SQLite turns a bound NaN into NULL; the text keeps the value
    if text == "Infinity":
        return math.inf
    if text == "-Infinity":
        return -math.inf
    if not _FLOAT_RE.fullmatch(text):
        raise ValueError("not a number")
    return float(text)


_BOOLS = {"t": 1, "true": 1, "f": 0, "false": 0}


def _to_bool(text: str) -> int:
    # Snapshot rows say true/false (col::text), replication rows and arrays say t/f.
    value = _BOOLS.get(text)
    if value is None:
        raise ValueError("not a boolean (t/true/f/false)")
    return value


def _to_bytes(text: str) -> bytes:
    if not text.startswith("\\x") or not _HEX_RE.fullmatch(text, 2):
        raise ValueError("not bytea hex output (\\x…)")
    return bytes.fromhex(text[2:])


def _timestamptz(text: str) -> str:
    """``+00`` → ``+00:00``; other offsets shifted to UTC. BC, infinity and 5-digit years as sent."""
    if text[-3:] == "+00" and _TSTZ_UTC_BODY.fullmatch(text, 0, len(text) - 3):
        return text[:-3] + "+00:00"  # the common case: a server in UTC
    match = _TSTZ_RE.fullmatch(text)
    if match is None:
        return text
    body, fraction, sign, hh, mm, ss = match.groups()
    if hh == "00" and mm in (None, "00") and ss in (None, "00"):
        return body + "+00:00"
    offset = timedelta(hours=int(hh), minutes=int(mm or 0), seconds=int(ss or 0))
    try:
        local = datetime.fromisoformat(body.replace("T", " ").split(".")[0])
        utc = local - offset if sign == "+" else local + offset
    except (ValueError, OverflowError):
        return text  # e.g. year 1 shifted below year 1: keep the original
    frac = "." + fraction if fraction else ""
    return f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d} {utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}{frac}+00:00"


def _timetz(text: str) -> str:
    # A timetz keeps its own offset (it is not an instant), so only the offset's form changes.
    match = _TIMETZ_RE.fullmatch(text)
    if match is None:
        return text
    time, hours, minutes = match.groups()
    return f"{time}{hours}:{minutes or '00'}"


def scalar_converter(pg_type: str) -> Callable[[str], SQLValue]:
    if pg_type in INT_TYPES:
        return _to_int
    if pg_type in FLOAT_TYPES:
        return to_float
    if pg_type in BOOL_TYPES:
        return _to_bool
    if pg_type == "bytea":
        return _to_bytes
    if pg_type == "timestamptz":
        return _timestamptz
    if pg_type == "timetz":
        return _timetz
    return str  # numeric, money, json, text, dates without zone, enums, unknown: as sent


# --- arrays ---


class _RawJSON(str):
    """JSON text embedded verbatim in an array's JSON (json/jsonb elements keep their numbers)."""


def _array_element(pg_type: str) -> Callable[[str], Any]:
    if pg_type in INT_TYPES:
        return _to_int
    if pg_type in FLOAT_TYPES:
        # JSON has no NaN/Infinity: those stay strings, finite values are numbers.
        return lambda text: text if text in ("NaN", "Infinity", "-Infinity") else to_float(text)
    if pg_type in BOOL_TYPES:
        return lambda text: bool(_to_bool(text))
    if pg_type == "bytea":
        return lambda text: _to_bytes(text).hex()  # plain hex: SQLite's unhex() reads it
    if pg_type in JSON_TYPES:
        return _json_element
    if pg_type == "timestamptz":
        return _timestamptz
    if pg_type == "timetz":
        return _timetz
    return str


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_element(text: str) -> _RawJSON:
    json.loads(text, parse_constant=_reject_constant)  # validate; the text itself is kept
    return _RawJSON(text.strip())


def _dump(node: Any) -> str:
    if isinstance(node, list):
        return "[" + ",".join(_dump(item) for item in node) + "]"
    if isinstance(node, _RawJSON):
        return str(node)
    return json.dumps(node, ensure_ascii=False, allow_nan=False)


# A one-dimensional array whose elements need no quoting or escaping: ``{a,b,NULL}`` or ``{}``.
_FLAT_ARRAY_RE = re.compile(r'\{(?:[^{}",\\\s]+(?:,[^{}",\\\s]+)*)?\}')


def array_converter(pg_type: str) -> Callable[[str], str]:
    element = _array_element(pg_type)
    delimiter = ";" if pg_type == "box" else ","
    flat = _FLAT_ARRAY_RE.fullmatch if delimiter == "," and pg_type not in JSON_TYPES else None
    dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode

    def convert(text: str) -> str:
        if flat is not None and flat(text):
            # The common case, without the general parser: same output as below.
            items = text[1:-1].split(",") if len(text) > 2 else []
            return dumps([None if item.upper() == "NULL" else element(item) for item in items])

        def walk(node: Any) -> Any:
            if isinstance(node, list):
                return [walk(item) for item in node]
            return None if node is None else element(node)

        return _dump(walk(parse_array(text, delimiter)))

    return convert
