"""The tuner's layout: one module touches Optuna's private API, and its modules import each other one way.

``tuner/_optuna.py`` is the adapter to Optuna's internals (``tests/test_optuna_private_api.py`` checks they still
exist); the executors get a ``StudyContext``, not the tuner, so neither imports the other; no module hides an import
of the package inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tetra_lightning.tuner._optuna import PRIVATE_API

TUNER = Path(__file__).resolve().parents[1] / "tetra_lightning" / "tuner"
PACKAGE = TUNER.parent
MODULES = sorted(TUNER.glob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _package_imports(tree: ast.Module, *, top_level: bool) -> set[str]:
    """Modules of tetra_lightning imported at module level (``top_level``) or inside functions and classes."""
    nodes = tree.body if top_level else [n for top in tree.body if not isinstance(top, (ast.Import, ast.ImportFrom))
                                         for n in ast.walk(top)]
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tetra_lightning"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("tetra_lightning"))
    return found


def test_only_the_adapter_touches_optuna_private_attributes() -> None:
    private = {name for names in PRIVATE_API.values() for name in names} | {"_cached_frozen_trial"}
    touched = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_optuna.py" or "optuna" not in path.read_text():
            continue  # the adapter itself, and modules that do not use Optuna (their `_storage` is not Optuna's)
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and node.attr in private and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                touched.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} .{node.attr}")
    assert touched == []


def test_no_tuner_module_imports_the_package_inside_a_function() -> None:
    hidden = {path.name: _package_imports(_tree(path), top_level=False) for path in MODULES}
    assert {name: modules for name, modules in hidden.items() if modules} == {}


def test_the_tuner_modules_import_each_other_without_a_cycle() -> None:
    graph = {f"tetra_lightning.tuner.{path.stem}": {m for m in _package_imports(_tree(path), top_level=True)
                                                     if m.startswith("tetra_lightning.tuner.")}
             for path in MODULES if path.stem != "__init__"}
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(module: str, path: tuple[str, ...]) -> None:
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            pytest.fail(f"import cycle: {' -> '.join((*path, module))}")
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*path, module))
        state[module] = "done"
        order.append(module)

    for module in sorted(graph):
        visit(module, ())
    assert len(order) == len(graph)


@pytest.mark.parametrize("executor", ["local", "processes", "_ray_backend"])
def test_executors_get_a_context_not_the_tuner(executor: str) -> None:
    imported = _package_imports(_tree(TUNER / f"{executor}.py"), top_level=True)
    assert "tetra_lightning.tuner.tuner" not in imported
    assert "tetra_lightning.tuner.context" in imported
