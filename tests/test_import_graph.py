"""The package's modules import each other one way: no import cycle, counting imports made inside
functions, so that data flows from the lower modules to the higher ones.

A module imports what it names: ``from . import x`` where ``x`` is a submodule imports ``x``;
``from .pkg import name`` where ``name`` is not a submodule imports ``pkg/__init__.py``;
``from .. import pkg`` imports ``pkg/__init__.py``. The parent packages Python runs on the way to
a submodule are not counted: a package ``__init__`` that re-exports its submodules is not in a
cycle with a submodule that imports a sibling directly.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import textwrap


def module_files(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
    """Every module under ``root`` (the package's directory) by dotted name; ``pkg/__init__.py``
    is the package's own name."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth (functions, methods, branches), except
    those under ``if TYPE_CHECKING:``, which never run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if _type_checking_only(node):
            children = list(node.orelse)
        stack.extend(children)


def imported_modules(name: str, path: pathlib.Path, modules: set[str], package: str) -> set[str]:
    """The modules of ``package`` that module ``name`` (at ``path``) imports."""
    is_init = path.name == "__init__.py"
    own_package = name if is_init else name.rpartition(".")[0]
    out = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in modules}
            continue
        if node.level:
            base = own_package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module or ""
        if source != package and not source.startswith(package + "."):
            continue
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            out.add(sub if sub in modules else source)
    out.discard(name)
    return {m for m in out if m in modules}


def import_graph(root: pathlib.Path, package: str) -> dict[str, set[str]]:
    """module -> the package's modules it imports."""
    files = module_files(root, package)
    return {name: imported_modules(name, path, set(files), package) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``a -> b -> ... -> a``) per strongly connected component that has one (Tarjan)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_a_cycle(graph, component) for component in components]


def _a_cycle(graph, component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside the component."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & component):
            if w == start:
                return [*path, start]
            if w not in seen:
                seen.add(w)
                paths.append([*path, w])
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected component


def test_the_package_has_no_import_cycle():
    # Found, not imported: the graph is read from the source alone.
    root = pathlib.Path(importlib.util.find_spec("neurosurgeon").submodule_search_locations[0])
    graph = import_graph(root, "neurosurgeon")
    assert len(graph) > 30 and "neurosurgeon.model.baselines" in graph["neurosurgeon.model"]
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in found)


def _package(tmp_path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return import_graph(tmp_path / "pkg", "pkg")


def test_an_import_inside_a_function_closes_a_cycle(tmp_path):
    graph = _package(tmp_path, {"__init__.py": "", "a.py": "from .b import f\n",
                                "b.py": "def f():\n    from .a import g\n    return g\n"})
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_a_package_init_reexporting_its_submodules_is_no_cycle(tmp_path):
    graph = _package(tmp_path, {
        "__init__.py": "from .sub import *\nfrom . import low\n",
        "sub/__init__.py": "from .x import X\n",
        "sub/x.py": "from ..low import helper\nfrom . import y\n",  # a sibling and a cousin, directly
        "sub/y.py": "import os\n",
        "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import x\n",
    })
    assert graph["pkg.sub.x"] == {"pkg.low", "pkg.sub.y"}
    assert graph["pkg"] == {"pkg.sub", "pkg.low"}
    assert cycles(graph) == []


def test_importing_a_package_by_name_imports_its_init(tmp_path):
    graph = _package(tmp_path, {"__init__.py": "from .sub.x import X\n", "sub/__init__.py": "from .x import X\n",
                                "sub/x.py": "from .. import sub\nX = 1\n"})
    assert graph["pkg.sub.x"] == {"pkg.sub"}
    assert cycles(graph) == [["pkg.sub", "pkg.sub.x", "pkg.sub"]]
