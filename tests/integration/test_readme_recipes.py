"""The README's recipes for reading a synced database run as written, next to a syncing Replica."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replica import Replica, Shape
from replica.cli.demo import _new_row
from replica.testing import sample_fake, serve_in_thread

pytestmark = pytest.mark.integration
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
RECIPES = dict(re.findall(r"<!-- recipe: ([\w-]+) -->\n```python\n(.*?)```", README, re.DOTALL))


def test_the_readme_has_the_recipes_this_file_runs() -> None:
    assert set(RECIPES) == {"sqlite3", "sqlalchemy", "pandas", "sqlite-utils", "data_version"}


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, object]]:
    folder = tmp_path_factory.mktemp("recipes")
    fake = sample_fake(rows=50, long_poll_timeout=2.0)
    with serve_in_thread(fake) as server, Replica(folder / "app.db", server.url, Shape("items")) as replica:
        assert replica.wait_until_synced(30), replica.status()
        yield folder, fake


def run(code: str, folder: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("recipe", ["sqlite3", "sqlalchemy", "pandas", "sqlite-utils"])
def test_a_recipe_reads_the_syncing_database(synced: tuple[Path, object], recipe: str) -> None:
    folder, _fake = synced
    out = run(RECIPES[recipe], folder)
    assert out.strip(), f"the {recipe} recipe printed nothing"
    if recipe == "sqlalchemy":
        assert out.strip() == "50"


def test_the_data_version_recipe_hears_a_commit_from_another_process(synced: tuple[Path, object]) -> None:
    folder, fake = synced
    watcher = subprocess.Popen([sys.executable, "-c", RECIPES["data_version"]], cwd=folder, stdout=subprocess.PIPE,
                               text=True)
    try:
        time.sleep(1.0)  # it has read data_version once
        fake.insert("items", {**_new_row(), "id": "5001"})  # type: ignore[attr-defined]
        out, _ = watcher.communicate(timeout=40)
    finally:
        watcher.kill()
        watcher.wait()
    assert out.strip() == "changed: 51 rows"
