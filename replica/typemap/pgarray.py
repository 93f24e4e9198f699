"""The Postgres array literal grammar (``array_out`` text → nested lists of element strings).

Pure and self-contained; ``replica.values`` converts the elements. Electric sends arrays in
Postgres text form (``{1,2}``, ``{{"a b",NULL},{"\\"q\\"",x}}``); this parser also takes what the TS
client's parser does not: explicit bounds (``[0:1]={…}``) and a non-comma delimiter (``box``: ``;``).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["parse_array"]

_BOUNDS_RE = re.compile(r"(?:\[[+-]?\d+:[+-]?\d+\])+\s*=\s*")
_MAX_ARRAY_DEPTH = 64  # Postgres allows 6 dimensions; the limit only stops runaway nesting


def parse_array(text: str, delimiter: str = ",") -> list[Any]:
    """Parse a Postgres array literal into nested lists of element strings (None for NULL).

    Handles nesting, double-quoted elements with ``\\"`` and ``\\\\`` escapes, unquoted NULL,
    ``{}``, an explicit-bounds prefix ``[0:1]={…}`` (dropped: JSON arrays start at 0), and a
    non-comma delimiter (``box`` uses ``;``). Raises ValueError for anything else.
    """
    pos = 0
    bounds = _BOUNDS_RE.match(text)
    if bounds is not None:
        pos = bounds.end()
    pos = _skip_ws(text, pos)
    if pos >= len(text) or text[pos] != "{":
        raise ValueError("an array literal starts with '{'")
    value, pos = _parse_level(text, pos, delimiter, 1)
    if _skip_ws(text, pos) != len(text):
        raise ValueError(f"unexpected text after the array at position {pos}")
    return value


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _parse_level(text: str, pos: int, delimiter: str, depth: int) -> tuple[list[Any], int]:
    if depth > _MAX_ARRAY_DEPTH:
        raise ValueError("array nested too deeply")
    items: list[Any] = []
    pos = _skip_ws(text, pos + 1)  # after '{'
    if pos < len(text) and text[pos] == "}":
        return items, pos + 1
    end = len(text)
    while True:
        pos = _skip_ws(text, pos)
        if pos >= end:
            raise ValueError("unterminated array")
        char = text[pos]
        if char == "{":
            item, pos = _parse_level(text, pos, delimiter, depth + 1)
            items.append(item)
        elif char == '"':
            chars: list[str] = []
            pos += 1
            while True:
                if pos >= end:
                    raise ValueError("unterminated quoted element")
                char = text[pos]
                if char == "\\":
                    if pos + 1 >= end:
                        raise ValueError("dangling backslash")
                    chars.append(text[pos + 1])
                    pos += 2
                elif char == '"':
                    pos += 1
                    break
                else:
                    chars.append(char)
                    pos += 1
            items.append("".join(chars))
        else:
            chars = []
            escaped = False
            while pos < end and text[pos] not in (delimiter, "}", "{", '"'):
                if text[pos] == "\\":
                    if pos + 1 >= end:
                        raise ValueError("dangling backslash")
                    chars.append(text[pos + 1])
                    escaped = True
                    pos += 2
                else:
                    chars.append(text[pos])
                    pos += 1
            element = "".join(chars).rstrip()  # input whitespace around elements is not data
            if not element:
                raise ValueError(f"empty unquoted element at position {pos}")
            items.append(None if element.upper() == "NULL" and not escaped else element)
        pos = _skip_ws(text, pos)
        if pos >= end:
            raise ValueError("unterminated array")
        if text[pos] == delimiter:
            pos += 1
        elif text[pos] == "}":
            return items, pos + 1
        else:
            raise ValueError(f"expected {delimiter!r} or '}}' at position {pos}")
