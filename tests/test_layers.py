"""The module layering of design.md §2, checked by walking imports with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "replica"
# Each module may import only modules listed before it (design.md §2).
ORDER = ["errors", "wire", "cuts", "inserts", "pgarray", "values", "schema", "sqlconvert", "replies", "protocol", "backoff", "dbfile", "scratch", "tuning", "tables", "staging", "shadow",
         "publish", "store", "events", "inflight", "http", "sync", "config", "logs", "metrics",
         "status", "daemon", "testing", "demo", "cli"]
PURE_FORBIDDEN = {"httpx", "anyio", "apsw", "time", "random", "socket", "asyncio", "threading", "sqlite3", "os"}


def replica_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "replica" and len(parts) > 1 and parts[1] in ORDER:
                found.add(parts[1])
            elif parts[0] != "replica":
                found.add("ext:" + parts[0])
    return found


def modules() -> list[tuple[str, Path]]:
    result = [(p.stem, p) for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")]
    result += [("testing", p) for p in (PACKAGE / "testing").glob("*.py")]
    return result


@pytest.mark.parametrize(("name", "path"), modules(), ids=lambda v: str(v))
def test_imports_follow_the_layering(name: str, path: Path) -> None:
    assert name in ORDER, f"{name}.py is not in design.md's module list"
    allowed = set(ORDER[: ORDER.index(name) + 1])
    bad = {m for m in replica_imports(path) if not m.startswith("ext:") and m not in allowed}
    assert not bad, f"{path.name} imports {sorted(bad)}, which come later in design.md §2"


def test_protocol_core_is_free_of_io() -> None:
    for module in ("protocol", "replies", "wire", "errors", "pgarray", "values", "schema", "sqlconvert", "cuts", "inserts"):
        external = {m[4:] for m in replica_imports(PACKAGE / f"{module}.py") if m.startswith("ext:")}
        assert not external & PURE_FORBIDDEN, f"{module}.py imports I/O: {sorted(external & PURE_FORBIDDEN)}"


def test_foreign_exceptions_are_translated_in_one_place_each() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if path.name != "http.py" and "testing" not in path.parts:
            assert "except httpx" not in text, f"{path.name} catches httpx errors; only http.py may"
        if path.name not in ("store.py", "staging.py", "publish.py", "shadow.py", "scratch.py", "tuning.py") and "testing" not in path.parts:
            assert "except apsw" not in text, f"{path.name} catches apsw errors; only the store's modules may"


def test_modules_stay_small() -> None:
    for path in PACKAGE.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.relative_to(PACKAGE.parent)} has {lines} lines; split it by responsibility"
