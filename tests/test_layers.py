"""The package's import graph: layers that only look down, no cycles, no private names shared.

Every module of ``mqsync/`` belongs to one layer.  A module may import from its own layer or
a lower one, never from a higher one, at module level or inside a function.  The graph of
modules has no cycle, and no module imports another module's private (``_``-prefixed) name.
A package's ``_``-prefixed submodule (``mqsync._delivery``) is private to the package, not to
the module: importing *it* is fine, importing a ``_name`` *from* a module is not.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mqsync"

# Bottom to top.  A module is placed by the longest prefix listed here.
LAYERS: list[tuple[str, list[str]]] = [
    ("values", [
        "mqsync._version", "mqsync.errors", "mqsync._log", "mqsync.timeseries", "mqsync.chunk",
        "mqsync._proto", "mqsync.config", "mqsync._files", "mqsync.names", "mqsync.measure",
    ]),
    ("io", [
        "mqsync.connection", "mqsync._delivery", "mqsync._worker", "mqsync.rpc",
        "mqsync.network",
    ]),
    ("client", ["mqsync.client"]),
    ("roles", [
        "mqsync.source", "mqsync.sink", "mqsync.subscription", "mqsync.history",
        "mqsync.scheduler", "mqsync.interval_source", "mqsync.state", "mqsync.spool",
        "mqsync.streamer",
    ]),
    ("servers and tools", [
        "mqsync.manager", "mqsync.db", "mqsync.embedded", "mqsync.plugin", "mqsync.host",
        "mqsync.datalogger",
        "mqsync.cli", "mqsync.pytest_plugin",
    ]),
    # the package itself re-exports the public API of every layer
    ("package", ["mqsync.__init__"]),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 2:
        parts = parts[:-1]
    return ".".join(parts)


def _layer_of(module: str) -> int:
    best = (-1, -1)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[1]:
                best = (index, len(prefix))
    if best[0] < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best[0]


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


class Edge(NamedTuple):
    importer: str
    imported: str  # a module, or the module a name is imported from
    name: str | None  # the name imported from ``imported``, None for a module
    line: int
    typing_only: bool  # inside ``if TYPE_CHECKING:``


def _typing_only_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(modules: dict[str, Path]) -> list[Edge]:
    """Every import of a module of mqsync, or of a name from one, in mqsync."""
    edges = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        typing_only = _typing_only_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "mqsync":
                        edges.append(Edge(module, alias.name, None, node.lineno,
                                          node.lineno in typing_only))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_package, node)
                if target.split(".")[0] != "mqsync":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules or sub + ".__init__" in modules:
                        edges.append(Edge(module, sub, None, node.lineno,
                                          node.lineno in typing_only))
                    else:
                        edges.append(Edge(module, target, alias.name, node.lineno,
                                          node.lineno in typing_only))
    return edges


def _owner(name: str, modules: dict[str, Path]) -> str:
    """The module ``name`` refers to (``mqsync.cli`` for the package ``mqsync/cli/``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return modules, _imports(modules)


def test_every_module_has_a_layer(graph):
    modules, _ = graph
    for module in modules:
        _layer_of(module)


def test_no_import_looks_up(graph):
    modules, edges = graph
    upward = []
    for importer, imported, _, line, _ in edges:
        target = _owner(imported, modules)
        if _layer_of(target) > _layer_of(importer):
            upward.append(
                f"{importer}:{line} imports {target} "
                f"({LAYERS[_layer_of(importer)][0]} -> {LAYERS[_layer_of(target)][0]})"
            )
    assert upward == []


def test_no_private_name_crosses_modules(graph):
    modules, edges = graph
    private = [
        f"{importer}:{line} imports {name} from {imported}"
        for importer, imported, name, line, _ in edges
        if name is not None and name.startswith("_") and name != "__version__"
        and _owner(imported, modules) != importer
    ]
    assert private == []


def test_no_cycle(graph):
    """No cycle of imports that run (an import for type annotations only may point back)."""
    modules, edges = graph
    successors: dict[str, set[str]] = {module: set() for module in modules}
    for importer, imported, _, _, typing_only in edges:
        if typing_only:
            continue
        target = _owner(imported, modules)
        # a package's __init__ re-exporting its own submodules is not a cycle
        if target != importer and not target.startswith(importer.removesuffix(".__init__") + "."):
            successors[importer].add(target)

    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(successors[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module)
    assert cycles == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test above can fail: an import of the manager from the client is caught."""
    node = ast.parse("from .manager import Manager\n").body[0]
    assert _resolve("mqsync.client", False, node) == "mqsync.manager"
    assert _layer_of("mqsync.manager") > _layer_of("mqsync.client")
    node = ast.parse("from .._files import move_aside\n").body[0]
    assert _resolve("mqsync.manager.store", False, node) == "mqsync._files"


def test_every_public_error_is_defined_in_errors(graph):
    """One hierarchy in one module: other modules may re-export an error, not define one."""
    modules, _ = graph
    elsewhere = []
    for module in modules:
        imported = importlib.import_module(module.removesuffix(".__init__"))
        for name, value in vars(imported).items():
            if (isinstance(value, type) and issubclass(value, BaseException)
                    and not name.startswith("_") and value.__module__ == imported.__name__
                    and imported.__name__ != "mqsync.errors"):
                elsewhere.append(f"{imported.__name__}.{name}")
    assert elsewhere == []
