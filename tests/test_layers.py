"""The package's import layers, written down once: a module may import its own layer and those below,
never one above. Every import counts, also those inside functions (lazy) and under TYPE_CHECKING.

A new module must be placed in a layer here (the test fails for one that is not).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sdnet_cli.data.datasets import DATASETS
from sdnet_cli.models.inputs import MODEL_INPUTS

PACKAGE = "sdnet_cli"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS: list[list[str]] = [
    ["sdnet_cli", "errors"],  # the package's __init__ (version) and the user-error family
    ["_io"],  # atomic writes, writable-folder checks, versions: every layer may write files
    [
        "rows",
        "schemas",
        "report",
        "plots",
        "resume",
        "forecast",
    ],  # marker values, file schemas, report files, figures, resume files, progress and its forecasts
    ["models"],  # networks, CSC layers, checkpoints, weights; they know their input normalisation
    ["data"],  # datasets, corruptions, cells and their sources
    ["specs"],  # what a caller asks for: the model, data and run records every API function takes
    ["distributed", "metrics", "runtime", "lam", "attacks", "adapt"],  # forwards, lambda policies, attacks
    [
        "evaluate",
        "sweep",
        "train",
        "check",
        "compare",
        "robustbench_export",
    ],  # the jobs, each a loop over the pieces below
    ["api"],  # the library's public functions (a module or a package)
    ["cli", "__main__"],  # the command line: parses, calls api, prints
]


def layer_of(module: str) -> int | None:
    """The layer of ``sdnet_cli.x.y`` is that of its first part below the package (``x``)."""
    parts = module.split(".")
    key = PACKAGE if len(parts) == 1 else parts[1]
    return next((i for i, names in enumerate(LAYERS) if key in names), None)


def module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, root: Path) -> bool:
    """Whether ``name`` (``from . import api``) is a module or package of the tree, not a function or class."""
    folder = root.parent.joinpath(*name.split("."))
    return folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file()


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every module of the package that ``path`` imports, anywhere in the file, relative imports resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            modules = {f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}", root)}
            if len(modules) < len(node.names):  # ``from .pkg import name`` runs pkg/__init__; ``from . import mod`` not
                found.add(base)
            found |= modules
    top = root.name
    return {m for m in found if m == top or m.startswith(f"{top}.")}


def violations(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        own = layer_of(name)
        if own is None:
            problems.append(f"{name} is in no layer of tests/test_layers.py: place it")
            continue
        for target in sorted(imported_modules(path, root)):
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                problems.append(f"{name} (layer {own}) imports {target} (layer {theirs})")
    return problems


def import_cycles(root: Path) -> list[list[str]]:
    """Groups of modules that import each other, directly or around a circle (every import counts, lazy ones
    and those under TYPE_CHECKING too: a lazy import only hides a circle, it does not remove it)."""
    graph = {module_name(path, root): imported_modules(path, root) for path in sorted(root.rglob("*.py"))}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        order[node] = low[node] = len(order)
        stack.append(node)
        for target in sorted(graph[node] - {node}):
            if target not in graph:
                continue
            if target not in order:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], order[target])
        if low[node] == order[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in graph:
        if node not in order:
            visit(node)
    return sorted(cycles)


def test_no_import_cycles() -> None:
    assert import_cycles(ROOT) == []


def test_an_import_cycle_is_found(tmp_path: Path) -> None:
    """The check itself: a circle through a lazy import inside a function is caught; a package importing its
    own submodule is not a circle."""
    root = tmp_path / PACKAGE
    (root / "models").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "models" / "__init__.py").write_text("from .registry import f\n")
    (root / "models" / "registry.py").write_text("def f():\n    from .zoo import g\n")
    (root / "models" / "zoo.py").write_text("from . import registry\n")
    assert import_cycles(root) == [["sdnet_cli.models.registry", "sdnet_cli.models.zoo"]]


def test_no_module_imports_a_higher_layer() -> None:
    assert violations(ROOT) == []


def test_a_wrong_way_import_is_found(tmp_path: Path) -> None:
    """The check itself: a lazy import of data inside models, and a module placed in no layer, are both caught."""
    root = tmp_path / PACKAGE
    (root / "models").mkdir(parents=True)
    (root / "data").mkdir()
    for init in (root, root / "models", root / "data"):
        (init / "__init__.py").write_text("")
    (root / "data" / "cells.py").write_text("from ..models import registry\n")  # from data down to models: allowed
    (root / "models" / "registry.py").write_text("def f():\n    from ..data.cells import SEVERITIES\n")
    (root / "newthing.py").write_text("")
    assert violations(root) == [
        "sdnet_cli.models.registry (layer 3) imports sdnet_cli.data.cells (layer 4)",
        "sdnet_cli.newthing is in no layer of tests/test_layers.py: place it",
    ]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_model_inputs_agree_with_datasets(name: str) -> None:
    """The model side (normalisation, classes, stem) is keyed by the data side's dataset names."""
    spec, expected = DATASETS[name], MODEL_INPUTS[name]
    assert (expected.num_classes, expected.stem, expected.image_size) == (spec.num_classes, spec.stem, spec.image_size)
