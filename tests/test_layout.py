"""The package's import rules (README, Architecture): no module imports another module's private
name, and no import cycle, counting imports inside functions too (an import moved into a
function hides a cycle; it does not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Cycles that stay, each for a reason: none today (the Dask routing sits above both the in-memory
#: array API and pruneplug.dask, in pruneplug.routing).
KNOWN_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    found = {}
    for top, package in (("pruneplug", "pruneplug"), ("backends", "pruneplug_backends")):
        for path in (ROOT / top).rglob("*.py"):
            parts = [package, *path.relative_to(ROOT / top).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(imported module, imported names) for every import in ``path``, at any depth, but not
    those under ``if TYPE_CHECKING:`` (annotations only)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                yield base, [a.name for a in child.names]
            elif isinstance(child, ast.Import):
                for a in child.names:
                    yield a.name, []
            yield from walk(child)

    yield from walk(ast.parse(path.read_text()))


def test_no_module_imports_another_modules_private_name():
    modules = _modules()
    offenders = [f"{name}: from {base} import {n}"
                 for name, path in modules.items() for base, names in _imports(name, path, modules)
                 for n in names
                 if n.startswith("_") and not n.startswith("__") and f"{base}.{n}" not in modules]
    assert not offenders, offenders


def test_no_import_cycles():
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for base, names in _imports(name, path, modules):
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            for target in (subs if subs and len(subs) == len(names) else [base, *subs]):
                if target in modules and target != name:
                    graph[name].add(target)
    # strongly connected components (Tarjan): each one of more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert [c for c in cycles if c not in KNOWN_CYCLES] == []


def test_the_rules_see_every_package_and_every_package_is_installed():
    """Subpackages (the conformance kit ``pruneplug.testing`` among them) are checked like modules,
    and each is listed in pyproject's ``packages`` (one left out would be missing from a wheel)."""
    import tomllib

    modules = _modules()
    assert {"pruneplug.testing", "pruneplug.testing.harness", "pruneplug.testing.collect"} <= set(modules)
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert packages == set(listed)
