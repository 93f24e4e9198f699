"""The config file: defaults, ${ENV} expansion, credential sources, and errors that name the field."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from replica.cli.config import DEFAULT_HOST, DEFAULT_PORT, load_config, parse_config, parse_listen, schema
from replica.errors import ConfigError
from replica.protocol import Shape

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"url": "http://127.0.0.1:3000/v1/shape", "database": "app.db", "shapes": [{"table": "items"}]}


def parse(raw: dict[str, Any], env: dict[str, str] | None = None, base: Path = Path("/srv")) -> Any:
    return parse_config(raw, base=base, env=env or {})


def test_defaults() -> None:
    config = parse(MINIMAL)
    assert config.url == MINIMAL["url"]
    assert config.database == Path("/srv/app.db")  # relative to the config file's directory
    assert config.shapes == (Shape("items"),)
    assert config.listen == (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 9470)
    assert (config.log_format, config.log_level, config.progress_interval) == ("text", "info", 10.0)
    assert config.secret is None and config.headers == {}
    assert config.live == "long-poll" and config.shapes[0].live is None


def test_live_mode_top_level_and_per_shape() -> None:
    config = parse({**MINIMAL, "live": "sse", "shapes": [{"table": "items"}, {"table": "b", "live": "long-poll"}]})
    assert config.live == "sse"
    assert [s.live for s in config.shapes] == [None, "long-poll"]  # None: the top-level live


def test_every_key() -> None:
    raw = {
        **MINIMAL,
        "database": "/var/lib/replica/app.db",
        "secret": "s3cret",
        "headers": {"X-Tenant": "acme"},
        "listen": "0.0.0.0:9000",
        "log_format": "json",
        "log_level": "debug",
        "progress_interval": 2.5,
        "shapes": [{"table": "public.items", "name": "open_items", "where": "status = $1", "params": {"1": "open"},
                    "columns": ["id", "price"], "replica": "full", "types": {"price": "real"}}],
    }
    config = parse(raw)
    assert config.database == Path("/var/lib/replica/app.db")
    assert config.shapes == (Shape("public.items", where="status = $1", params={"1": "open"}, columns=("id", "price"),
                                   replica="full", name="open_items", types={"price": "real"}),)
    assert config.secret is not None and config.secret.value() == "s3cret" and not config.secret.dynamic
    assert config.headers["X-Tenant"].value() == "acme"
    assert config.listen == ("0.0.0.0", 9000)
    assert (config.log_format, config.log_level, config.progress_interval) == ("json", "debug", 2.5)


def test_env_expansion() -> None:
    raw = {**MINIMAL, "url": "${ELECTRIC_URL}", "secret": "${SECRET:-fallback}",
           "shapes": [{"table": "items", "where": "note = '$${literal}' AND id > $1", "params": {"1": "${MIN}"}}]}
    config = parse(raw, env={"ELECTRIC_URL": "https://e.example/v1/shape", "MIN": "5"})
    assert config.url == "https://e.example/v1/shape"
    assert config.secret is not None and config.secret.value() == "fallback"
    assert config.shapes[0].where == "note = '${literal}' AND id > $1"  # $1 placeholders are left alone
    assert config.shapes[0].params == (("1", "5"),)
    # a value is never re-parsed: whatever the variable holds stays one string
    assert parse({**MINIMAL, "secret": "${S}"}, env={"S": '" ]] ${X}'}).secret.value() == '" ]] ${X}'


def test_file_and_command_sources(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("one\n")
    raw = {**MINIMAL, "headers": {
        "Authorization": {"file": "token", "prefix": "Bearer "},
        "X-Key": {"command": [sys.executable, "-c", "print('from-command')"]},
    }}
    config = parse(raw, base=tmp_path)
    auth, key = config.headers["Authorization"], config.headers["X-Key"]
    assert auth.dynamic and auth.value() == "Bearer one"
    assert key.value() == "from-command"
    (tmp_path / "token").write_text("two")
    assert auth.value() == "Bearer one"  # cached until refreshed (after a 401/403)
    assert auth.refresh() is True and auth.value() == "Bearer two"
    assert auth.refresh() is False
    (tmp_path / "token").unlink()
    with pytest.raises(ConfigError, match=r"^headers\.Authorization: cannot read"):
        auth.refresh()
    assert auth.value() == "Bearer two"  # the last good value stays


def test_a_failing_command_reports_its_status_not_its_output() -> None:
    raw = {**MINIMAL, "secret": {"command": [sys.executable, "-c", "import sys; print('leak'); sys.exit(3)"]}}
    with pytest.raises(ConfigError) as caught:
        parse(raw).secret.value()
    assert str(caught.value).startswith("secret: ") and "status 3" in str(caught.value)
    assert "leak" not in str(caught.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": None}, r"^url: missing"),
        ({"database": None}, r"^database: missing"),
        ({"shapes": None}, r"^shapes: missing"),
        ({"url": "ftp://x"}, r"^url: must start with http"),
        ({"url": 3}, r"^url: must be a string, not a number"),
        ({"database": ""}, r"^database: must not be empty"),
        ({"shapes": []}, r"^shapes: must not be empty"),
        ({"databse": "x"}, r"^databse: unknown key \(did you mean 'database'\?\)"),
        ({"secret": 42}, r"^secret: must be a string, \{file = PATH\} or \{command"),
        ({"secret": {"file": "a", "command": ["b"]}}, r"^secret: must be a string"),
        ({"headers": {"Bad Name": "x"}}, r"^headers\.Bad Name: not a header name"),
        ({"headers": {"A": {"command": []}}}, r"^headers\.A: must be a string"),
        ({"listen": "localhost"}, r"^listen: expected HOST:PORT"),
        ({"log_format": "xml"}, r"^log_format: must be one of 'text', 'json'"),
        ({"log_level": "loud"}, r"^log_level: must be one of"),
        ({"live": "websocket"}, r"^live: must be one of 'long-poll', 'sse'"),
        ({"shapes": [{"table": "i", "live": "poll"}]}, r"^shapes\[0\]\.live: must be one of"),
        ({"progress_interval": 0}, r"^progress_interval: must be greater than 0"),
        ({"shapes": [{}]}, r"^shapes\[0\]\.table: missing"),
        ({"shapes": [{"table": "items", "wher": "x"}]}, r"^shapes\[0\]\.wher: unknown key \(did you mean 'where'"),
        ({"shapes": [{"table": ""}]}, r"^shapes\[0\]\.table: must not be empty"),
        ({"shapes": [{"table": "a.b.c"}]}, r"^shapes\[0\]\.table: "),
        ({"shapes": [{"table": "i", "name": ""}]}, r"^shapes\[0\]\.name: must not be empty"),
        ({"shapes": [{"table": "i", "where": 1}]}, r"^shapes\[0\]\.where: must be a string"),
        ({"shapes": [{"table": "i", "where": "a = $1", "params": {"x": "1"}}]}, r"^shapes\[0\]\.params\.x: keys"),
        ({"shapes": [{"table": "i", "where": "a = $1", "params": {"1": 1}}]}, r"^shapes\[0\]\.params\.1: must be a"),
        ({"shapes": [{"table": "i", "where": "a = $2", "params": {"2": "x"}}]}, r"^shapes\[0\]\.params: "),
        ({"shapes": [{"table": "i", "params": {"1": "x"}}]}, r"^shapes\[0\]\.params: given without a where"),
        ({"shapes": [{"table": "i", "columns": "id"}]}, r"^shapes\[0\]\.columns: must be an array"),
        ({"shapes": [{"table": "i", "columns": []}]}, r"^shapes\[0\]\.columns: must not be empty"),
        ({"shapes": [{"table": "i", "columns": ["a", "a"]}]}, r"^shapes\[0\]\.columns: lists the same item twice"),
        ({"shapes": [{"table": "i", "replica": "partial"}]}, r"^shapes\[0\]\.replica: must be one of"),
        ({"shapes": [{"table": "i", "types": {"a": "float"}}]}, r"^shapes\[0\]\.types\.a: must be one of"),
        ({"shapes": [{"table": "items"}, {"table": "public.items"}]}, r"^shapes\[1\]\.name: another shape"),
        ({"secret": "${NOT_SET}"}, r"^secret: environment variable NOT_SET is not set"),
        ({"shapes": [{"table": "i", "where": "${NOT_SET}"}]}, r"^shapes\[0\]\.where: environment variable"),
    ],
)
def test_each_field_error_names_the_field(change: dict[str, Any], message: str) -> None:
    raw = {k: v for k, v in {**MINIMAL, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        parse(raw)


def test_errors_never_echo_values() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({**MINIMAL, "secret": ["hunter2-canary"]})
    assert "canary" not in str(caught.value)


def test_load_config_reads_toml_relative_to_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "replica.toml"
    path.write_text('url = "http://h/v1/shape"\ndatabase = "data/app.db"\n[[shapes]]\ntable = "items"\n')
    assert load_config(path, env={}).database == tmp_path / "data" / "app.db"
    path.write_text("url = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9470", ("127.0.0.1", 9470)), (":80", ("127.0.0.1", 80)), ("[::1]:9", ("::1", 9)),
     ("0.0.0.0:0", ("0.0.0.0", 0))],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9470", "host:", "host:99999", "host:http"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="^--listen: expected HOST:PORT"):
        parse_listen(text)


def test_the_shipped_schema_is_the_published_one() -> None:
    published = (ROOT / "schemas" / "config.schema.json").read_text()
    shipped = (ROOT / "replica" / "cli" / "config.schema.json").read_text()
    assert shipped == published, "copy schemas/config.schema.json to replica/cli/config.schema.json"


def readme_daemon_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Daemon", 1)[1].split("\n## ", 1)[0]


def test_readme_config_examples_are_valid(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", readme_daemon_section(), re.DOTALL)
    assert blocks, "the README's Daemon section has no TOML example"
    for block in blocks:
        path = tmp_path / "replica.toml"
        path.write_text(block)
        load_config(path, env={"ELECTRIC_SECRET": "x", "ELECTRIC_URL": "http://electric:3000/v1/shape"})


def test_readme_config_reference_matches_the_schema() -> None:
    table = readme_daemon_section().split("| Key | Meaning |", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_.\[\]]+)`", table, re.MULTILINE))
    props = schema()["properties"]
    shape_props = schema()["$defs"]["shape"]["properties"]
    keys = set(props) - {"shapes"} | {f"shapes[].{name}" for name in shape_props}
    assert documented == keys


def test_a_shape_names_its_consistency_group_or_opts_out() -> None:
    raw = {**MINIMAL, "shapes": [{"table": "a"}, {"table": "b", "group": "orders"}, {"table": "c", "group": False}]}
    assert [s.group for s in parse(raw).shapes] == ["default", "orders", None]
    with pytest.raises(ConfigError, match=r"shapes\[0\]\.group: must be a consistency group's name, or false"):
        parse({**MINIMAL, "shapes": [{"table": "a", "group": True}]})
