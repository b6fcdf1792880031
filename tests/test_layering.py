"""server.py is the composition root: it may import the stdlib, websockets and assistant only.

import-linter checks the packages (see pyproject.toml); server.py is a top-level module that
import-linter cannot take as a root, so this test reads its imports directly.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"websockets", "assistant"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_server_imports_only_stdlib_websockets_and_assistant() -> None:
    imported = _imports(ROOT / "server.py") - {"__future__"}
    foreign = {name for name in imported if name not in sys.stdlib_module_names} - ALLOWED
    assert not foreign, f"server.py imports {sorted(foreign)}; route them through assistant"


@pytest.mark.parametrize("package", ["assistant", "fusion", "profiles"])
def test_only_server_imports_websockets(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        assert "websockets" not in _imports(path), f"{path} imports websockets"
