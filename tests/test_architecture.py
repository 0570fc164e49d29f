"""The import structure of ``mpcompile``: no import cycles, and the layers import only downwards.

Every module under ``mpcompile/`` is parsed with ``ast`` (nothing is imported). Module-level imports
(those run when the module is imported: also inside ``try``/``if`` at the top, but not under
``if TYPE_CHECKING:``) make the graph that must be acyclic. The layering rules cover every
import, function-level lazy ones included: a lazy import still couples the two modules.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Callable

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mpcompile"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, *, top_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements under ``node``; with ``top_level``, only those run at import time."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        elif top_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif top_level and isinstance(child, ast.If) and _is_type_checking(child.test):
            found.extend(_imports(ast.Module(body=child.orelse, type_ignores=[]), top_level=True))
        else:
            found.extend(_imports(child, top_level=top_level))
    return found


def _targets(module: str, statement: ast.Import | ast.ImportFrom) -> set[str]:
    """The mpcompile modules an import statement loads (the most specific module for each name)."""
    if isinstance(statement, ast.Import):
        names = [alias.name for alias in statement.names]
    else:
        base = statement.module or ""
        if statement.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(statement.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in statement.names
        ]
    found = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("mpcompile"):
            found.add(name)
    found.discard(module)
    return found


def _graph(*, top_level: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module] = set()
        for statement in _imports(tree, top_level=top_level):
            graph[module] |= _targets(module, statement)
    return graph


MODULE_LEVEL = _graph(top_level=True)
ALL_IMPORTS = _graph(top_level=False)


def _layer(module: str) -> str:
    """The package a module belongs to, relative to ``mpcompile``: ``mpcompile.core.plan`` ->
    ``core``; ``mpcompile.targets.optimize.levels`` -> ``targets.optimize`` (every package is a
    layer); top-level modules are their own layer: ``mpcompile.errors`` -> ``errors``; the package
    itself, ``mpcompile``, is ``""``."""
    path = MODULES[module]
    parts = path.parent.relative_to(PACKAGE).parts
    if parts:
        return ".".join(parts)
    return "" if path.name == "__init__.py" else path.stem


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_parser_sees_the_package():
    assert "mpcompile.cli" in MODULES and "mpcompile.core.plan" in MODULES
    assert "mpcompile.core.plan" in MODULE_LEVEL["mpcompile.analysis.audit"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_module_level_imports_are_acyclic():
    assert _cycle(MODULE_LEVEL) is None


# The layers, bottom to top: a module imports only from its own layer and from lower tiers (any
# import, lazy ones included); the layers of one tier are peers that never import each other.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(tier)
    for tier in (
        {"errors", "text", "version", "irtools"},  # import nothing from mpcompile
        {"core"},  # the vocabulary: plan, precisions, ranges, Casts, the pass runner
        {"targets"},  # kernel capabilities, the target registry, ORT's schemas
        {"policy"},  # every precision rule
        {"io"},  # safe load and save (checks ops against policy/ and targets/ schemas)
        {"evaluate"},  # ORT and faithful runs, inputs, shapes, memory limits
        {"analysis"},  # static facts shared by report and --auto
        {"targets.optimize"},  # ORT's optimiser (it types fused ops with policy/type_propagation)
        {"passes"},  # one pass per module (OptimizePass runs targets.optimize), the ConversionContext
        {"compiler"},  # the driver: options, build_pipeline, convert(), folders
        {"auto", "training", "validate"},
        {"report"},  # renders --auto's trace
        {"commands"},
        {"cli"},
        {""},  # the public API of ``mpcompile``, loaded lazily
    )
)
TIER = {layer: rank for rank, tier in enumerate(LAYERS) for layer in tier}

# layer -> layers it must not import from even though they are lower (any import, lazy ones included)
FORBIDDEN = {
    "io": {"core", "passes", "auto", "report", "validate", "evaluate", "analysis"},
    "analysis": {"auto", "report"},
    "auto": {"report"},  # the report renders --auto's trace; both share analysis/
    "policy": {"passes", "auto", "report", "validate"},
}
# layers that import nothing from mpcompile but each other
SELF_CONTAINED = {"irtools", "errors", "text", "version"}


def _imports_of_layer(layer: str, into: Callable[[str], bool]) -> list[str]:
    """``module -> target`` for each import of a ``layer`` module whose target's layer is ``into``."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in ALL_IMPORTS.items()
        if _layer(module) == layer
        for target in targets
        if into(_layer(target))
    )


def _not_downwards(layer: str, target: str) -> bool:
    """True when a ``layer`` module may not import from ``target``: a higher tier or a peer."""
    return target != layer and TIER[target] >= TIER[layer]


def test_every_package_has_a_layer():
    layers = {_layer(module) for module in MODULES}
    assert layers == set(TIER), f"packages without a layer: {sorted(layers - set(TIER))}"
    assert set(FORBIDDEN) | SELF_CONTAINED <= set(TIER)


def test_the_layer_rules_catch_an_upward_import():
    assert _layer("mpcompile.targets.optimize.levels") == "targets.optimize"
    assert _layer("mpcompile.targets") == "targets" and _layer("mpcompile") == ""
    assert _not_downwards("core", "compiler") and _not_downwards("auto", "training")
    assert not _not_downwards("compiler", "core") and not _not_downwards("core", "core")


@pytest.mark.parametrize("layer", sorted(TIER))
def test_layer_imports_only_downwards(layer):
    assert _imports_of_layer(layer, lambda target: _not_downwards(layer, target)) == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_does_not_import_upwards(layer):
    assert _imports_of_layer(layer, lambda target: target in FORBIDDEN[layer]) == []


@pytest.mark.parametrize("layer", sorted(SELF_CONTAINED))
def test_layer_is_self_contained(layer):
    assert _imports_of_layer(layer, lambda target: target not in SELF_CONTAINED) == []
