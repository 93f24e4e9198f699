"""The layers of design.md §2, checked by walking imports with ast.

replica is a stack of subpackages; a module may import its own subpackage and the layers below
it, never a layer above. Top-level modules (errors, …) are the foundation every layer may use.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "replica"
# Bottom to top: each layer may import the ones before it (design.md §2).
LAYERS = ["errors", "redaction", "status", "tuning", "typemap", "protocol", "fast", "store", "sync", "testing", "cli"]
# Layers that are pure: no I/O, no clock, no randomness, no threads.
PURE = ["errors", "redaction", "status", "typemap", "protocol"]
PURE_FORBIDDEN = {"httpx", "anyio", "apsw", "time", "random", "socket", "asyncio", "threading", "sqlite3", "os"}


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def replica_imports(path: Path) -> set[str]:
    """The layers (``replica.<layer>``) and external top-level packages (``ext:<name>``) a file imports."""
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
            if parts[0] == "replica" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
            elif parts[0] != "replica":
                found.add("ext:" + parts[0])
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem not in ("__init__", "__main__"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    layer = layer_of(path)
    assert layer in LAYERS, f"{path.relative_to(PACKAGE)} is in no layer of design.md §2"
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    bad = {m for m in replica_imports(path) if not m.startswith("ext:") and m not in allowed}
    assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}, layers above {layer!r} (design.md §2)"


def test_every_subpackage_says_what_it_holds_and_may_import() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc and "Never imported by" in doc, f"{init.relative_to(PACKAGE)} lacks its layer note"


def test_the_pure_layers_do_no_io() -> None:
    for path in modules():
        if layer_of(path) in PURE:
            external = {m[4:] for m in replica_imports(path) if m.startswith("ext:")}
            assert not external & PURE_FORBIDDEN, f"{path.name} imports I/O: {sorted(external & PURE_FORBIDDEN)}"


def test_foreign_exceptions_are_translated_in_one_place_each() -> None:
    for path in modules():
        text = path.read_text()
        layer = layer_of(path)
        if layer == "testing":
            continue
        if path.relative_to(PACKAGE) != Path("sync/http.py"):
            assert "except httpx" not in text, f"{path.name} catches httpx errors; only sync/http.py may"
        if layer not in ("store", "fast", "tuning"):
            assert "except apsw" not in text, f"{path.name} catches apsw errors; only the store and fast layers may"


def test_modules_stay_small() -> None:
    for path in PACKAGE.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.relative_to(PACKAGE.parent)} has {lines} lines; split it by responsibility"
