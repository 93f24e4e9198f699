"""The README's Troubleshooting sessions are real: each `$ replica …` command runs as a subprocess and
must print the lines shown, in that order, and exit with the code shown by `$ echo $?`.

The README's hosts stand for servers started here: `localhost:3000` the sample fake Electric,
`localhost:8080` a plain web server with a sign-in page, `localhost:3001` a closed port. Output is
read back with the README's hosts; `…` in a README line matches anything.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daemonproc import free_port
from plainweb import serve_page

from replica.testing import sample_fake, serve_in_thread

pytestmark = pytest.mark.integration

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@dataclass
class Session:
    command: str
    lines: list[str] = field(default_factory=list)
    exit_code: int | None = None


def troubleshooting_sessions() -> list[Session]:
    section = README.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    sessions: list[Session] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.DOTALL):
        lines = block.splitlines()
        index = 0
        while index < len(lines):
            line = lines[index]
            if line == "$ echo $?":
                sessions[-1].exit_code = int(lines[index + 1])
                index += 2
                continue
            if line.startswith("$ "):
                sessions.append(Session(line[2:]))
            else:
                sessions[-1].lines.append(line)
            index += 1
    return sessions


SESSIONS = troubleshooting_sessions()


def test_the_section_has_the_sessions_the_issue_asks_for() -> None:
    commands = " ".join(s.command for s in SESSIONS)
    assert len(SESSIONS) >= 5
    for needed in ("http://localhost:3000 ", "http://localhost:8080 ", "--timeout", "http://localhost:3000/v1/shape"):
        assert needed in commands + " ", needed
    assert all(s.command.startswith("replica ") and s.lines for s in SESSIONS)


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, str]]:
    """README host → the real base URL standing for it."""
    with serve_in_thread(sample_fake()) as electric, serve_page() as (web, _):
        yield {
            "http://localhost:3000": electric.url.removesuffix("/v1/shape"),
            "http://localhost:8080": web,
            "http://localhost:3001": f"http://127.0.0.1:{free_port()}",
        }


def matches(expected: str, actual: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, actual) is not None


@pytest.mark.parametrize("session", SESSIONS, ids=[s.command for s in SESSIONS])
def test_the_readme_session_is_what_replica_prints(session: Session, hosts: dict[str, str], tmp_path: Path) -> None:
    command = session.command
    for readme_host, real in hosts.items():
        command = command.replace(readme_host, real)
    args = shlex.split(command)
    assert args[0] == "replica"
    env = {k: v for k, v in os.environ.items() if k != "ELECTRIC_SECRET"}
    done = subprocess.run([sys.executable, "-m", "replica", *args[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=env)
    output = done.stderr
    for readme_host, real in hosts.items():
        output = output.replace(real, readme_host)
    printed = output.splitlines()
    position = 0
    for expected in session.lines:
        found = next((i for i in range(position, len(printed)) if matches(expected, printed[i])), None)
        assert found is not None, f"README line not printed (in order):\n{expected}\n--- printed:\n{output}"
        position = found + 1
    if session.exit_code is not None:
        assert done.returncode == session.exit_code, output
    if done.returncode != 0:  # the README: none of the failing runs leaves app.db behind
        assert sorted(p.name for p in tmp_path.iterdir()) == []
