"""No import cycles among the project's modules, counting every import the source contains.

import-linter's contracts see the graph as grimp builds it; this test reads the source itself so
that an import hidden under `if TYPE_CHECKING:` or inside a function still counts: a cycle that
only type checkers or late calls follow is still two modules that cannot be read apart.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("assistant", "fusion", "profiles", "tests", "bench")
TOP_MODULES = ("server",)


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for the project's packages and top-level modules."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    for name in TOP_MODULES:
        if (root / f"{name}.py").exists():
            found[name] = root / f"{name}.py"
    return found


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    # `import a.b.c` where a.b.c is a module, or the deepest package of it that is one.
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """Every project module `module` imports anywhere in its source (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from pkg import module` names a module; `from module import name` its module.
                target = _resolve(f"{base}.{alias.name}", modules)
                if target:
                    found.add(target)
    found.discard(module)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_project_has_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    assert "assistant.chat.session" in graph, "the module scan found none of the project"
    found = cycles(graph)
    detail = "\n".join(" <-> ".join(component) for component in found)
    assert not found, f"import cycles (TYPE_CHECKING and function-local imports count):\n{detail}"


def test_hidden_imports_count(tmp_path: Path) -> None:
    """A cycle closed only under TYPE_CHECKING or inside a function is still found."""
    pkg = tmp_path / "assistant"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from assistant.b import B\n"
    )
    (pkg / "b.py").write_text("def late():\n    from . import c\n")
    (pkg / "c.py").write_text("import assistant.a\n")
    (pkg / "d.py").write_text("from assistant import a\n")
    graph = import_graph(tmp_path)
    assert graph["assistant.a"] == {"assistant.b"}
    assert graph["assistant.b"] == {"assistant.c"}
    assert graph["assistant.d"] == {"assistant.a"}
    assert cycles(graph) == [["assistant.a", "assistant.b", "assistant.c"]]
