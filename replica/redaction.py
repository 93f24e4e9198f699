"""Secrets never leave the process in text: the one place that knows what a secret looks like.

``Redactor`` removes from any text the values it was told about (the API secret, credentials from
files or commands, headers and parameters named like credentials, tokens that header functions
returned), ``secret=``/``api_secret=`` URL parameters and ``Bearer``/``Basic``/``Token``
credentials. The sync loop words its errors and status with one; the daemon's log lines and
endpoints go through another. ``redact_url`` is the URL-only form for HTTP logging. Pure.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "SECRET_PARAMS", "Redactor", "has_secret_param", "is_sensitive", "redact_url"]

REDACTED = "[redacted]"
#: Query parameters whose values are Electric's API secret (``api_secret`` is the old name).
SECRET_PARAMS = frozenset({"secret", "api_secret"})
#: Header, parameter and config-field names whose values are credentials.
_SENSITIVE_NAME = re.compile(r"auth|cookie|token|secret|key|passw|session", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"\b(" + "|".join(sorted(SECRET_PARAMS)) + r")=[^&\s'\"<>]*")
_CREDENTIAL = re.compile(r"\b(Bearer|Basic|Token)\s+[^\s'\"<>,;]+", re.IGNORECASE)
MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words; such secrets are no secrets
_REFRESHED = 32  # values returned by header/parameter functions that are remembered


def is_sensitive(name: str) -> bool:
    """True for a header, parameter or field name whose value is a credential."""
    return _SENSITIVE_NAME.search(name) is not None


def has_secret_param(text: str) -> bool:
    return any(f"{name}=" in text for name in SECRET_PARAMS)


def redact_url(url: str) -> str:
    """The URL with secret parameter values and any ``user:password@`` replaced."""
    parts = urlsplit(url)
    if not parts.query and "@" not in parts.netloc:
        return url
    query = [(k, REDACTED if k in SECRET_PARAMS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe=",[]\""), parts.fragment))


class Redactor:
    """Removes every secret it knows, and every secret-shaped text, from what it is called with.

    ``url``: its ``secret=`` values are known from the start. ``named``: (name, value) pairs whose
    values are learnt when the name looks like a credential (``learn``). Values that header or
    parameter functions return are remembered with ``refreshed`` (the last few, whatever their
    name: a refreshed token). Safe to share between threads: each call works on a snapshot.
    """

    def __init__(
        self, secrets: Iterable[str | None] = (), *, url: str | None = None, named: Iterable[tuple[str, Any]] = ()
    ) -> None:
        self._known: frozenset[str] = frozenset()
        self._refreshed: deque[str] = deque(maxlen=_REFRESHED)
        for secret in secrets:
            self.add(secret)
        if url is not None:
            for key, value in parse_qsl(urlsplit(url).query):
                if key in SECRET_PARAMS:
                    self.add(value)
        self.learn(named)

    def add(self, value: str | None) -> None:
        """Know ``value`` (and its stripped form) as a secret."""
        if value and len(value.strip()) >= MIN_SECRET_LENGTH:
            self._known = self._known | {value, value.strip()}  # a new set: readers never see it change

    def learn(self, named: Iterable[tuple[str, Any]]) -> None:
        """Know the values whose names look like credentials (``Authorization``, ``X-Api-Key``, …)."""
        for name, value in named:
            if isinstance(value, str) and is_sensitive(name):
                self.add(value)

    def refreshed(self, value: str) -> None:
        """Know a value a header or parameter function returned (kept among the last few)."""
        if len(value) >= MIN_SECRET_LENGTH and value not in self._refreshed:
            self._refreshed.append(value)

    def __call__(self, text: str) -> str:
        text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
        text = _CREDENTIAL.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        # Longest first: a token inside a header value goes with it.
        secrets = sorted({*self._known, *tuple(self._refreshed)}, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text
