"""Every project path the README, docs/ and the model cards name exists.

A newcomer finds their way by these pages; a path that moved without its page sends them to a
room that is not there. Patterns (`*`, `{a,b}`) and the outputs a run writes are not paths.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "fusion" / "weights").glob("*.md")),
]
PATH = re.compile(
    r"(?<![\w/.-])((?:assistant|fusion|profiles|tests|bench|docs|migrations|scripts)/[\w./-]*)"
)
# Written by a benchmark run, not kept in the tree.
OUTPUTS = ("bench/results/",)


def named_paths(text: str) -> list[str]:
    found = []
    for match in PATH.finditer(text):
        path = match.group(1).rstrip(".")  # a sentence's full stop is not part of the path
        if text[match.end() : match.end() + 1] in ("{", "*", "<") or path.startswith(OUTPUTS):
            continue
        found.append(path)
    return found


def test_architecture_page_exists_and_names_the_rooms() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    for room in ("core", "cluster", "replies", "chat", "voice", "operators", "app"):
        assert f"assistant/{room}/" in text or f"{room}/" in text, room
    assert len(named_paths(text)) > 40


@pytest.mark.parametrize(
    "room",
    sorted(p.parent for p in (ROOT / "assistant").glob("*/__init__.py")),
    ids=lambda p: p.name,
)
def test_each_room_lists_its_modules(room: Path) -> None:
    """A room's `__init__` is its map: one line a module, none missing, none gone."""
    listed = set(re.findall(r"^- (\w+):", (room / "__init__.py").read_text(), flags=re.M))
    present = {p.stem for p in room.glob("*.py") if p.stem != "__init__"}
    assert listed == present, f"{room.name}: listed {sorted(listed)}, present {sorted(present)}"


def test_the_path_pattern_reads_what_pages_write() -> None:
    text = "see `assistant/chat/turns.py`, fusion/heads/ and `docs/report.{json,md}` or x/y.py"
    assert named_paths(text) == ["assistant/chat/turns.py", "fusion/heads/"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_path_exists(page: Path) -> None:
    missing = [p for p in named_paths(page.read_text()) if not (ROOT / p).exists()]
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"
