"""The README's "Development" tree names every module and test file that exists, and
nothing that does not: a new module without its line, or a line left behind by a
removed one, fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("recall", "stream", "offline", "devtools")


def development_tree() -> list[str]:
    """The lines of the first code block under README's "## Development"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Development\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1].splitlines()[1:]


def listed() -> tuple[set[str], set[str]]:
    """(module paths of the tree, test file names of its tests/ part). A line is
    ``<indent>name/`` (a folder under the nearest shallower folder) or
    ``<indent>name.py  what it does``; under tests/, any ``*.py`` word counts."""
    modules: set[str] = set()
    tests: set[str] = set()
    folders: list[tuple[int, str]] = []  # (indent, path) of the open folders
    for line in development_tree():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        while folders and folders[-1][0] >= indent:
            folders.pop()
        word = line.split()[0]
        if word.endswith("/"):
            parent = folders[-1][1] if folders else ""
            folders.append((indent, parent + word))
        elif folders and folders[0][1] == "tests/":
            tests.update(re.findall(r"\b[\w]+\.py\b", line))
        elif word.endswith(".py") and folders:
            modules.add(folders[-1][1] + word)
    return modules, tests


def test_the_development_tree_lists_every_module_and_test_file() -> None:
    modules, tests = listed()
    on_disk = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES
               for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    test_files = {p.name for p in (ROOT / "tests").glob("*.py") if p.name != "__init__.py"}
    where = "README Development tree"
    assert not on_disk - modules, f"{where}: add a line for {sorted(on_disk - modules)}"
    assert not modules - on_disk, f"{where}: {sorted(modules - on_disk)} do not exist"
    assert not test_files - tests, f"{where}: add {sorted(test_files - tests)} under tests/"
    assert not tests - test_files, f"{where}: {sorted(tests - test_files)} do not exist"
