"""`make lint` fails on a lint error and on a type error, and passes on the tree as committed.

Runs the recipe of the Makefile's ``lint`` target (not ``make lint`` itself, whose ``setup`` prerequisite would sync
the virtualenv) on a copy of the tracked files, as CI runs it on a fresh clone.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# The first mypy run checks the whole tree (and the stubs of torch & co.) from a cold cache: minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parent.parent
VICTIM = Path("postlens/schemas.py")  # the ground floor: every other part imports it


Lint = Callable[[], "subprocess.CompletedProcess[str] | None"]


def lint_commands() -> list[list[str]]:
    """The ``lint`` target's recipe, with the Makefile's ``$(PY)`` as this interpreter."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, flags=re.MULTILINE)
    assert recipe, "the Makefile has no lint target"
    return [shlex.split(line.strip().replace("$(PY)", sys.executable)) for line in recipe.group(1).splitlines()]


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked tree as it is in this working copy (what a commit of it would hold)."""
    root = tmp_path_factory.mktemp("tree")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, names.decode().split("\0")):
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    return root


@pytest.fixture(scope="module")
def lint(copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Lint:
    # One mypy cache for every run: after the first, only the changed module is checked again.
    env = {**os.environ, "MYPY_CACHE_DIR": str(tmp_path_factory.mktemp("mypy-cache"))}
    env.pop("PYTHONPATH", None)  # the copy's code, not this checkout's

    def run() -> subprocess.CompletedProcess[str] | None:
        """Run the recipe as make does, stopping at the first failing command (returned); None when all pass."""
        for command in lint_commands():
            done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                return done
        return None

    return run


@contextmanager
def broken(copy: Path, addition: str) -> Iterator[None]:
    path = copy / VICTIM
    original = path.read_text()
    path.write_text(original + addition)
    try:
        yield
    finally:
        path.write_text(original)


def test_the_committed_tree_passes(lint: Lint) -> None:
    failed = lint()
    assert failed is None, f"{shlex.join(failed.args)} failed:\n{failed.stdout[-3000:]}{failed.stderr[-2000:]}"


@pytest.mark.parametrize(
    ("addition", "tool", "says"),
    [
        ("\nimport os\n", "ruff", "F401"),  # an unused import
        ('\n\nx: int = "s"\n', "mypy", "[assignment]"),  # a type error
    ],
    ids=["lint-error", "type-error"],
)
def test_an_injected_error_fails_lint(lint: Lint, copy: Path, addition: str, tool: str, says: str) -> None:
    with broken(copy, addition):
        failed = lint()
    assert failed is not None, f"lint passed with {addition.strip()!r} in {VICTIM}"
    assert tool in " ".join(failed.args), f"{shlex.join(failed.args)} failed, not {tool}"
    assert says in failed.stdout and str(VICTIM) in failed.stdout, failed.stdout[-3000:]
