"""The package's layers import downward only, and no two modules import each other.

    webservice -> transport -> actors -> storage -> sites (the root package's modules)

An import inside an ``if TYPE_CHECKING:`` block counts too: a cycle for the type checker is a
cycle in the design.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

PACKAGE = "socketio_webservice"
ROOT = Path(__file__).parents[1] / PACKAGE
LAYERS = {"sites": 0, "storage": 1, "actors": 2, "transport": 3, "webservice": 4}
GENERIC = {"actors", "transport", "storage", "webservice", "bench", "testkit", "tests"}


def read_package(root: Path = ROOT) -> dict[str, str]:
    """Module name -> source, for every module under ``root`` (through the layers' links)."""
    modules = {}
    paths = [
        Path(folder) / name
        for folder, _, names in os.walk(root, followlinks=True)
        for name in names
        if name.endswith(".py")
    ]
    for path in sorted(paths):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([PACKAGE, *parts])] = path.read_text()
    return modules


def imports(module: str, source: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The modules of ours that ``module`` imports, absolute."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import x` names a module
                if f"{target}.{alias.name}" in known:
                    yield f"{target}.{alias.name}"
                    break
            else:
                yield target


def layer(module: str) -> int:
    parts = module.split(".")
    if parts[-1] == "__main__":
        return max(LAYERS.values())  # an entry point sits above everything
    if len(parts) == 1:
        return LAYERS["sites"]  # the root package itself
    return LAYERS.get(parts[1], LAYERS["sites"])  # root modules (sites) are the bottom


def violations(modules: Mapping[str, str]) -> list[str]:
    known = set(modules)
    packages = {name for name in known if any(other.startswith(name + ".") for other in known)}
    graph: dict[str, set[str]] = {}
    found = []
    for module, source in modules.items():
        graph[module] = set()
        for target in imports(module, source, module in packages, known):
            top = target.split(".")[0]
            if top in GENERIC:
                found.append(f"{module} imports {target}: use {PACKAGE}.{target}")
            if not target.startswith(PACKAGE):
                continue
            if layer(target) > layer(module):
                found.append(f"{module} imports {target}: an upward import")
            if target != module and target in known and not module.startswith(target + "."):
                graph[module].add(target)
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return found


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module."""
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


def test_the_package_imports_downward_only_and_without_cycles() -> None:
    modules = read_package()
    assert len(modules) > 30  # the links to the layers were followed
    assert violations(modules) == []


def test_the_check_finds_an_upward_import_a_cycle_and_a_generic_name() -> None:
    modules = {
        PACKAGE: "",
        f"{PACKAGE}.sites": "",
        f"{PACKAGE}.storage": "",
        f"{PACKAGE}.storage.base": "from ..transport.limits import Limits\n",
        f"{PACKAGE}.transport": "",
        f"{PACKAGE}.transport.limits": "",
        f"{PACKAGE}.actors": "",
        f"{PACKAGE}.actors.a": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .b import B\n",
        f"{PACKAGE}.actors.b": "from . import a\nfrom storage.base import X\n",
    }
    assert violations(modules) == [
        f"{PACKAGE}.storage.base imports {PACKAGE}.transport.limits: an upward import",
        f"{PACKAGE}.actors.b imports storage.base: use {PACKAGE}.storage.base",
        f"import cycle: {PACKAGE}.actors.a -> {PACKAGE}.actors.b",
    ]
