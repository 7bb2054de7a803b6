"""The layers of CONTRIBUTING.md, checked from the source: who may import whom, and no circles.

Every module under qcoder_ds is parsed with ``ast`` (nothing is imported), so an import inside
a function counts as much as one at the top of the file: moving an import into a function is
how the circle between ``copilot/cli_ask.py`` and ``commands/ask.py`` hid from Python.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import qcoder_ds

PKG = Path(qcoder_ds.__file__).resolve().parent
SHARED = ("paths", "errors", "isolation")  # usable from any layer; they import only each other
# CONTRIBUTING.md's picture, bottom up: a module imports its own layer or lower ones only.
LAYERS = (("models",), ("runtime",), ("engine", "remote_engine"), ("copilot", "lessons", "grading"),
          ("commands", "cli", "magics", "server"))


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    module_level: bool  # runs when the importer is loaded (not in a function or TYPE_CHECKING)


def _module_name(path: Path) -> str:
    parts = ("qcoder_ds",) + path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = _modules()


def _known(name: str) -> str:
    """The module a dotted import name loads: ``qcoder_ds.a.b.func`` is ``qcoder_ds.a.b``."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _base(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{package}.{node.module}" if node.module else package


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = _base(module, node)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                 for a in node.names]
    return [_known(n) for n in names if n == "qcoder_ds" or n.startswith("qcoder_ds.")]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _walk(module: str, node: ast.AST, module_level: bool) -> list[Import]:
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found += [Import(module, t, child.lineno, module_level)
                      for t in _targets(module, child)]
        inner = module_level and not isinstance(
            child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(child, ast.If) and _is_type_checking(child):
            inner = False
        found += _walk(module, child, inner)
    return found


def _imports() -> list[Import]:
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += [i for i in _walk(module, tree, True) if i.target != module]
    return found


IMPORTS = _imports()


def _part(module: str) -> str:
    """The layer a module belongs to: the first name under qcoder_ds."""
    return module.split(".")[1] if "." in module else ""


def _rank(part: str) -> int:
    """The layer's height; the package's own ``__init__`` sits above all of them."""
    return next((n for n, names in enumerate(LAYERS) if part in names), len(LAYERS))


def _allowed(importer: str, target: str) -> bool:
    src, dst = _part(importer), _part(target)
    if not dst:
        return True  # the package itself (``__version__``), loaded before any module anyway
    if src in SHARED:
        return dst in SHARED
    return dst in SHARED or _rank(dst) <= _rank(src)


def layer_violations() -> dict[tuple[str, str], list[Import]]:
    bad: dict[tuple[str, str], list[Import]] = {}
    for i in IMPORTS:
        if not _allowed(i.importer, i.target):
            bad.setdefault((i.importer, i.target), []).append(i)
    return bad


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if i.module_level or not module_level_only:
            graph[i.importer].add(i.target)
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components of more than one module (a module importing itself is skipped)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.add(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(part)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_path(graph: dict[str, set[str]], part: set[str]) -> list[str]:
    """One circle through a component, as the import chain a reader can follow."""
    start = min(part)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & part):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    raise AssertionError(f"no circle through {start}")  # a component always has one


def cycles(module_level_only: bool) -> dict[frozenset[str], list[str]]:
    graph = _graph(module_level_only)
    return {frozenset(p): _cycle_path(graph, p) for p in _strongly_connected(graph)}


# ---------------------------------------------------------------- the checker itself


def test_the_parser_sees_relative_nested_and_type_only_imports():
    source = ("from .context import describe_dataframe\n"
              "from ..lessons import explain, errors\n"
              "class A:\n    from qcoder_ds.engine import Engine\n"
              "def f():\n    import qcoder_ds.paths\n"
              "if TYPE_CHECKING:\n    from qcoder_ds import cli\n")
    found = _walk("qcoder_ds.copilot.pipeline", ast.parse(source), True)
    assert [(i.target, i.line, i.module_level) for i in found] == [
        ("qcoder_ds.copilot.context", 1, True), ("qcoder_ds.lessons.explain", 2, True),
        ("qcoder_ds.lessons.errors", 2, True), ("qcoder_ds.engine", 4, True),
        ("qcoder_ds.paths", 6, False), ("qcoder_ds.cli", 8, False)]
    assert len(IMPORTS) > 100 and all(i.target in MODULES for i in IMPORTS)


def test_the_circle_finder_finds_a_circle_and_names_its_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    (part,) = _strongly_connected(graph)
    assert part == {"a", "b", "c"} and _cycle_path(graph, part) == ["a", "b", "c", "a"]
    assert _strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("importer, target, ok", [
    ("qcoder_ds.runtime.export", "qcoder_ds.copilot.pipeline", False),
    ("qcoder_ds.models.sources", "qcoder_ds.engine", False),
    ("qcoder_ds.models.sources", "qcoder_ds.runtime.export", False),
    ("qcoder_ds.copilot.cli_ask", "qcoder_ds.commands.ask", False),  # a feature, the CLI
    ("qcoder_ds.paths", "qcoder_ds.models.choice", False),
    ("qcoder_ds.paths", "qcoder_ds.errors", True),
    ("qcoder_ds.runtime.export", "qcoder_ds.paths", True),
    ("qcoder_ds.commands.ask", "qcoder_ds.copilot.cli_ask", True),
    ("qcoder_ds.copilot.pipeline", "qcoder_ds.lessons.explain", True),
    ("qcoder_ds", "qcoder_ds.magics", True),
    ("qcoder_ds.cli", "qcoder_ds", True),
])
def test_the_layer_rule(importer, target, ok):
    assert _allowed(importer, target) is ok


# ---------------------------------------------------------------- the tree


def _where(imports: list[Import]) -> str:
    return ", ".join(f"line {i.line}" for i in imports)


def test_no_module_imports_a_higher_layer():
    bad = layer_violations()
    lines = [f"{a} imports {b} ({_where(bad[a, b])})" for a, b in sorted(bad)]
    assert not bad, "imports against the layers (CONTRIBUTING.md):\n" + "\n".join(lines)


def _paths(found: dict[frozenset[str], list[str]]) -> str:
    return "\n".join(sorted(" -> ".join(path) for path in found.values()))


def test_no_import_circles_at_module_level():
    """Such a circle breaks at import time, depending on which module is loaded first."""
    found = cycles(module_level_only=True)
    assert not found, f"import circles (module-level imports):\n{_paths(found)}"


def test_no_import_circles_hidden_in_functions():
    found = cycles(module_level_only=False)
    assert not found, f"import circles (imports at module level and in functions):\n{_paths(found)}"
