"""The ``replica run`` config file: TOML → shapes and daemon options.

The file is checked against ``schemas/config.schema.json`` (shipped in the package as
``config.schema.json``) before anything else, so every mistake is reported as a ``ConfigError``
that names its field (``shapes[1].where: …``). Then ``${NAME}`` / ``${NAME:-default}`` in string
values are replaced from the environment (``$${`` is a literal ``${``), after TOML parsing, so a
variable's value can never change the file's structure.

A secret or header value may be a literal, ``{file = PATH}`` or ``{command = [ARGV…]}``: a
``Source`` reads it at start and again when the server answers 401/403 (a rotated token is picked
up without a restart).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from replica.errors import ConfigError
from replica.protocol.shape import DEFAULT_GROUP, Shape

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Config", "Source", "load_config", "parse_listen", "schema"]

DEFAULT_HOST = "127.0.0.1"  # never reachable from other machines unless the config says so
DEFAULT_PORT = 9470
COMMAND_TIMEOUT = 30.0  # seconds a credential command may take

_PATTERN_HINTS = {
    "url": "must start with http:// or https://",
    "listen": f"expected HOST:PORT, e.g. {DEFAULT_HOST}:{DEFAULT_PORT}",
}
_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Source:
    """A secret or header value: a literal, the contents of a file, or a command's output.

    ``value()`` is cached; ``refresh()`` reads it again (after a 401/403) and returns True when it
    changed. A failed refresh keeps the last good value. ``field`` names it in errors; the value
    itself never appears in a message.
    """

    def __init__(
        self,
        field: str,
        *,
        literal: str | None = None,
        file: Path | None = None,
        command: tuple[str, ...] | None = None,
        prefix: str = "",
    ) -> None:
        self.field = field
        self.literal = literal
        self.file = file
        self.command = command
        self.prefix = prefix
        self._lock = threading.Lock()
        self._value: str | None = literal

    @property
    def dynamic(self) -> bool:
        return self.literal is None

    def value(self) -> str:
        with self._lock:
            if self._value is None:
                self._value = self._read()
            return self._value

    def refresh(self) -> bool:
        """Read the value again; True if it changed. Raises ConfigError (old value kept) on failure."""
        if not self.dynamic:
            return False
        new = self._read()
        with self._lock:
            changed, self._value = new != self._value, new
        return changed

    def _read(self) -> str:
        if self.literal is not None:
            return self.literal
        if self.file is not None:
            try:
                text = self.file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{self.field}: cannot read {self.file}: {exc.strerror}") from None
        else:
            assert self.command is not None
            try:
                done = subprocess.run(
                    self.command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ConfigError(f"{self.field}: cannot run {self.command[0]!r}: {exc}") from None
            if done.returncode != 0:
                # Its stderr may echo the credential: report only the exit status.
                raise ConfigError(f"{self.field}: {self.command[0]!r} exited with status {done.returncode}")
            text = done.stdout.strip()
        if not text:
            raise ConfigError(f"{self.field}: the value read is empty")
        return self.prefix + text


@dataclass(frozen=True)
class Config:
    """A validated config. Each shape carries its own column ``types``."""

    url: str
    database: Path
    shapes: tuple[Shape, ...]
    secret: Source | None = None
    headers: Mapping[str, Source] = field(default_factory=dict)
    listen: tuple[str, int] = (DEFAULT_HOST, DEFAULT_PORT)
    log_format: str = "text"
    log_level: str = "info"
    progress_interval: float = 10.0
    path: Path | None = None
    ca_file: Path | None = None
    live: str = "long-poll"  # how shapes without their own ``live`` receive live changes
    writes_url: str | None = None  # [writes] url: where local writes to writable shapes go
    writes_headers: Mapping[str, Source] = field(default_factory=dict)

    def sources(self) -> list[Source]:
        return ([self.secret] if self.secret is not None else []) + list(self.headers.values()) + list(
            self.writes_headers.values())


def schema() -> dict[str, Any]:
    """The JSON Schema of the config file."""
    text = resources.files("replica.cli").joinpath("config.schema.json").read_text(encoding="utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and expand the config at ``path``. Raises ConfigError naming the field."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    return parse_config(raw, base=path.parent, env=os.environ if env is None else env, path=path)


def parse_config(
    raw: Mapping[str, Any], *, base: Path, env: Mapping[str, str], path: Path | None = None
) -> Config:
    data = _expand(raw, env, "")  # first, so that a variable may hold a URL, a port or a path
    _validate(data)
    shapes: list[Shape] = []
    for index, item in enumerate(data["shapes"]):
        where = f"shapes[{index}]"
        try:
            shape = Shape(
                table=item["table"],
                where=item.get("where"),
                params=item.get("params", {}),
                columns=item.get("columns"),
                replica=item.get("replica", "default"),
                name=item.get("name"),
                types=item.get("types", {}),
                group=_group(item.get("group", DEFAULT_GROUP)),
                live=item.get("live"),
                writable=item.get("writable", False),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None  # Shape's messages start with the field name
        if shape.local_name.casefold() in (s.local_name.casefold() for s in shapes):
            raise ConfigError(f"{where}.name: another shape already syncs into table {shape.local_name!r}")
        shapes.append(shape)
    database = Path(data["database"]).expanduser()
    ca_file = Path(data["ca_file"]).expanduser() if "ca_file" in data else None
    if ca_file is not None and not ca_file.is_absolute():
        ca_file = base / ca_file
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"ca_file: {ca_file} is not a file (a CA bundle in PEM format)")
    return Config(
        url=data["url"],
        database=database if database.is_absolute() else base / database,
        shapes=tuple(shapes),
        secret=_source("secret", data["secret"], base) if "secret" in data else None,
        headers={name: _source(f"headers.{name}", value, base) for name, value in data.get("headers", {}).items()},
        listen=parse_listen(data["listen"], "listen") if "listen" in data else (DEFAULT_HOST, DEFAULT_PORT),
        log_format=data.get("log_format", "text"),
        log_level=data.get("log_level", "info"),
        progress_interval=float(data.get("progress_interval", 10.0)),
        path=path,
        ca_file=ca_file,
        live=data.get("live", "long-poll"),
        writes_url=data["writes"]["url"] if "writes" in data else None,
        writes_headers={name: _source(f"writes.headers.{name}", value, base)
                        for name, value in data.get("writes", {}).get("headers", {}).items()},
    )


def _group(value: str | bool) -> str | None:
    return None if value is False else str(value)


def parse_listen(text: str, field: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; an empty host means 127.0.0.1) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{field}: expected HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT}), got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or DEFAULT_HOST, int(port)


def _source(field: str, value: Any, base: Path) -> Source:
    if isinstance(value, str):
        return Source(field, literal=value)
    prefix = value.get("prefix", "")
    if "file" in value:
        file = Path(value["file"]).expanduser()
        return Source(field, file=file if file.is_absolute() else base / file, prefix=prefix)
    return Source(field, command=tuple(value["command"]), prefix=prefix)


def _expand(value: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: environment variable {name} is not set (use ${{{name}:-default}})")

        return _ENV.sub(substitute, value)
    if isinstance(value, Mapping):
        return {k: _expand(v, env, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _validate(raw: Mapping[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        raise ConfigError(_describe(errors[0]))


def _describe(error: jsonschema.ValidationError) -> str:
    """A jsonschema error as ``field: what is wrong``, without echoing the (possibly secret) value."""
    where = _path(error.absolute_path)
    instance: Any = error.instance
    kind: Any = error.validator
    expected: Any = error.validator_value
    if kind == "required":
        missing = [key for key in expected if key not in instance]
        return f"{_join(where, missing[0])}: missing (required)"
    if kind == "additionalProperties" and isinstance(instance, Mapping):
        schema: Any = error.schema
        allowed = list(schema.get("properties", {}))
        unknown = [key for key in instance if key not in allowed]
        hint = difflib.get_close_matches(unknown[0], allowed, n=1)
        return f"{_join(where, unknown[0])}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    if "propertyNames" in error.schema_path:  # a key (not secret) of params or headers
        what = "keys are the numbers of $N placeholders" if where.endswith("params") else "not a header name"
        return f"{_join(where, str(instance))}: {what}"
    if kind == "enum":
        return f"{where}: must be one of {', '.join(map(repr, expected))}"
    if kind == "type":
        return f"{where}: must be {_a(expected)}, not {_a(_toml_type(instance))}"
    if kind == "oneOf" and where.endswith(".group"):
        return f"{where}: must be a consistency group's name, or false"
    if kind == "oneOf":
        return f"{where}: must be a string, {{file = PATH}} or {{command = [ARGV...]}}"
    if kind == "pattern":
        return f"{where}: {_PATTERN_HINTS.get(where, 'has the wrong form')}"
    if kind in ("minItems", "minLength"):
        return f"{where}: must not be empty"
    if kind == "uniqueItems":
        return f"{where}: lists the same item twice"
    if kind == "exclusiveMinimum":
        return f"{where}: must be greater than {error.validator_value}"
    return f"{where}: {error.message}"


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "config"


def _join(where: str, key: str) -> str:
    return key if where == "config" else f"{where}.{key}"


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object" if isinstance(value, Mapping) else "value"


def _a(kind: Any) -> str:
    names = kind if isinstance(kind, list) else [kind]
    words = {"object": "a table", "array": "an array", "string": "a string", "number": "a number"}
    return " or ".join(words.get(str(n), f"a {n}") for n in names)
