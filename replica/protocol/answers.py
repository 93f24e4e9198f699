"""Reading Electric's answers beyond the happy path, for the ``ShapeLog``: error bodies,
Retry-After, the electric-schema header, and the check that a change's key names the row its
primary key does. Pure; nothing here keeps state. Bodies and headers may be anything a proxy or
attacker sends: every helper answers or raises ``ProtocolError``, never another error.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from replica.errors import ProtocolError
from replica.protocol import wire
from replica.protocol.messages import Change, Move
from replica.redaction import Redactor

__all__ = [
    "check_keys",
    "check_row_keys",
    "is_out_of_bounds",
    "parse_schema",
    "pk_columns",
    "refusal_message",
    "retry_after_seconds",
    "summary",
]

_SCRUB = Redactor()  # an error page may echo the request: secret-shaped text goes


def check_keys(changes: Sequence[Change | Move], schema: Mapping[str, Any] | None, relation: tuple[str, str]) -> None:
    """ProtocolError unless each change's key is the one Electric builds from its primary key.

    The store finds rows by their primary-key values, so a key naming another row (or table)
    means the server and replica disagree about which row a message changes. Only checked for
    keyed tables; a change without its primary key is left for the store to refuse. Move events
    (subquery shapes) name no row and are passed over.
    """
    pk = pk_columns(schema)
    if pk:
        _check_pairs(((c.key, [c.value.get(column) for column in pk]) for c in changes if isinstance(c, Change)),
                     relation)


def check_row_keys(
    keys: list[str], rows: list[Any], first: int, *, schema: Mapping[str, Any], relation: tuple[str, str]
) -> None:
    """``check_keys`` for whole-row inserts as ``parse_whole_inserts`` reads them: ``rows[i]``
    holds ``keys[i]``'s column i as attribute ``f<i>``, and ``first`` is ``keys[0]``'s index."""
    pk = pk_columns(schema)
    if pk:
        position = {name: i for i, name in enumerate(schema)}
        get = operator.attrgetter(*(f"f{position[column]}" for column in pk))
        if len(pk) == 1 and _all_match(keys, cast(list[str | None], [*map(get, rows)]), relation):
            return
        values = cast(Iterable[Sequence[str | None]], map(get, rows) if len(pk) > 1 else zip(map(get, rows)))  # tuples
        _check_pairs(zip(keys, values, strict=True), relation, first)


def _all_match(keys: list[str], values: list[str | None], relation: tuple[str, str]) -> bool:
    """True if every key is the one its single PK value makes; False means: look closer, row by row.

    One comparison of joined strings instead of 100k small ones. NUL joins them: when no value
    holds a NUL of its own (JSON can only escape one in), the expected side has a NUL only between
    keys, so a joined key string equal to it splits back into the same keys.
    """
    if len(keys) != len(values):
        return False
    try:
        joined = "\0".join(cast(list[str], values))
    except TypeError:  # a None among them
        return False
    if joined.count("\0") != len(values) - 1:
        return False
    head = wire.relation_key_prefix(*relation) + '/"'
    return "\0".join(keys) == head + joined.replace("/", "//").replace("\0", '"\0' + head) + '"'


def _check_pairs(pairs: Iterable[tuple[str, Sequence[str | None]]], relation: tuple[str, str], first: int = 0) -> None:
    prefix = wire.relation_key_prefix(*relation) + "/"  # wire.build_key, with the prefix made once
    for index, (key, values) in enumerate(pairs, first):
        if None in values:
            continue  # no key to compare with: the store refuses a change without its primary key
        expected = prefix + wire.key_values(values)
        if key != expected:
            _mismatch(index, key, expected)


def _mismatch(index: int, key: str, expected: str) -> None:
    raise ProtocolError(
        f"message {index}: key {clip(key)} does not match its primary key "
        f"{clip(expected)}; the server and the shape disagree about which row it changes"
    )


def parse_schema(raw: str) -> dict[str, Any]:
    """The electric-schema header's JSON object; ProtocolError if it is not one."""
    try:
        schema = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"electric-schema header is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ProtocolError("electric-schema header must be a JSON object of column → type")
    return schema


def pk_columns(schema: Mapping[str, Any] | None) -> list[str]:
    """Primary-key column names in ``pk_index`` order; empty if none (or the schema is unusable)."""
    if not isinstance(schema, Mapping):
        return []
    keyed = []
    for name, spec in schema.items():
        index = spec.get("pk_index") if isinstance(spec, Mapping) else None
        if isinstance(index, int) and not isinstance(index, bool):
            keyed.append((index, name))
    return [name for _index, name in sorted(keyed)]


def clip(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def is_out_of_bounds(body: bytes) -> bool:
    try:
        errors = json.loads(body).get("errors", {})
        return any("out of bounds" in str(m) for m in errors.get(wire.P_OFFSET, []))
    except (ValueError, AttributeError, TypeError, RecursionError):  # any body a proxy may send
        return False


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as delta-seconds; an HTTP-date needs a clock, so the caller resolves it."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def summary(body: bytes, limit: int = 200) -> str:
    """The start of an error body for a message; it may echo the request, so secrets are redacted
    and a word cut at the limit is dropped (a cut token could not be recognised later)."""
    text = _SCRUB(body[: limit * 4].decode("utf-8", "replace")).strip()
    if len(text) > limit or len(body) > limit * 4:
        text = re.sub(r"[^\s,;&'\"<>()]*$", "", text[:limit]) + "…"
    return f"({text})" if text else ""


def refusal_message(status: int, body: bytes) -> str:
    detail = summary(body)
    try:
        errors = json.loads(body).get("errors")
        if isinstance(errors, dict):
            detail = _SCRUB("; ".join(f"{field}: {', '.join(map(str, msgs))}" for field, msgs in errors.items()))
    except (ValueError, AttributeError, TypeError, RecursionError):  # any body a proxy may send
        pass
    hints = {
        400: "the server refused the shape definition",
        401: "unauthorized: pass the right secret (--secret) or auth header",
        403: "forbidden: the credentials are not allowed to read this shape",
        404: "no shape endpoint here: the URL should end with /v1/shape",
    }
    return f"{status} {hints.get(status, 'request refused')}: {detail}".rstrip(": ")
