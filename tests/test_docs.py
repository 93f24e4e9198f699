"""The README and the code agree: guarantees ↔ tests, CLI ↔ docs (both directions)."""

from __future__ import annotations

import re
from pathlib import Path

from replica.cli.commands import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def guarantee_ids_in_readme() -> set[str]:
    return set(re.findall(r"^\s*[-*] \*\*(R\d+)\b", README, re.MULTILINE))


def guarantee_ids_in_tests() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        for gid in re.findall(r"guarantee\(\s*\"(R\d+)\"", path.read_text()):
            found.setdefault(gid, []).append(path.name)
    return found


def test_every_guarantee_has_a_test_and_every_test_names_a_real_guarantee() -> None:
    documented = guarantee_ids_in_readme()
    tested = guarantee_ids_in_tests()
    assert documented == {f"R{i}" for i in range(1, 12)}
    assert not documented - set(tested), f"guarantees without a test: {sorted(documented - set(tested))}"
    assert not set(tested) - documented, f"tests name unknown guarantees: {sorted(set(tested) - documented)}"


def test_every_cli_command_and_option_is_documented() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for name, sub in subparsers.choices.items():  # type: ignore[union-attr]
        assert f"replica {name}" in README, f"`replica {name}` is not in the README"
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in README, f"`replica {name} {option}` is not in the README"


def test_readme_gives_exactly_the_two_setup_commands() -> None:
    assert "scripts/demo" in README and "scripts/test" in README
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
