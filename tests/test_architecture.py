"""The shape of the code, checked: no import cycles (lazy and type-only imports count), the
storage layer below everything that reads it, and modules of one job each."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[1]
PACKAGES = ("neurolens", "pytest_neurolens")
MAX_LINES = 350
# What each layer may not import: the storage knows nothing of who reads it.
FORBIDDEN = {
    "neurolens.storage": (
        "neurolens.remote",
        "neurolens.cli",
        "neurolens.report",
        "neurolens.analysis",
        "neurolens.sources",
    ),
    "neurolens.remote": ("neurolens.cli", "neurolens.report", "neurolens.analysis", "neurolens.sources"),
    "neurolens.analysis": ("neurolens.cli", "neurolens.report"),
    "neurolens.report": ("neurolens.cli",),
    "neurolens.hardware": ("neurolens.storage", "neurolens.remote", "neurolens.cli", "neurolens.analysis"),
}


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((TOP / package).rglob("*.py")):
            parts = path.relative_to(TOP).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every module of ours ``path`` imports, wherever the import stands (in a function, under
    TYPE_CHECKING): a lazy import is still a dependency."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` depends on pkg.mod when that is a module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    modules = set(files)
    return {name: imports_of(path, name, modules) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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
    return found


def test_the_packages_have_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    # the checker itself, on a cycle of the kind the layout once had (a lazy import back up)
    a = tmp_path / "a.py"
    a.write_text("import b\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from a import x\n")
    graph = {"a": imports_of(a, "a", {"a", "b"}), "b": imports_of(b, "b", {"a", "b"})}
    assert cycles(graph) == [["a", "b"]]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    wrong = {
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if module == layer or module.startswith(layer + ".")
        for target in targets
        if any(target == above or target.startswith(above + ".") for above in FORBIDDEN[layer])
    }
    assert sorted(wrong) == []


def test_no_module_holds_more_than_one_job() -> None:
    long = {
        name: n
        for name, path in module_files().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_plugin_module_is_glue_and_imports_no_library_code_at_load() -> None:
    tree = ast.parse((TOP / "pytest_neurolens" / "plugin.py").read_text(encoding="utf-8"))
    top_level = [
        node.module or ""
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("neurolens")
    ]
    assert top_level == []
