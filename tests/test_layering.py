"""Imports import-linter cannot see: server.py's, and bench/'s into tests/.

import-linter checks the packages (see pyproject.toml). server.py, the network edge, is a
top-level module that import-linter cannot take as a root, and bench/ is scripts: this test
reads their imports directly.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"websockets", "assistant"}


def _modules(path: Path) -> set[str]:
    """Every module `path` imports absolutely, anywhere in it (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _imports(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _modules(path)}


def test_server_imports_only_stdlib_websockets_and_assistant() -> None:
    imported = _imports(ROOT / "server.py") - {"__future__"}
    foreign = {name for name in imported if name not in sys.stdlib_module_names} - ALLOWED
    assert not foreign, f"server.py imports {sorted(foreign)}; route them through assistant"


@pytest.mark.parametrize("package", ["assistant", "fusion", "profiles"])
def test_only_server_imports_websockets(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        assert "websockets" not in _imports(path), f"{path} imports websockets"


def test_bench_shares_only_tests_support() -> None:
    """bench/ may reuse the test helpers in tests/support/, never a test module."""
    for path in (ROOT / "bench").rglob("*.py"):
        for name in _modules(path):
            if name == "tests" or name.startswith("tests."):
                assert name.startswith("tests.support"), f"{path} imports {name}"
