"""The package's shape (docs/architecture.md): one import name, stages that only point back,
no cycles, no private names across modules, small modules. Read from the source with ``ast``,
imports inside functions included."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import seamline

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"seamline": "seamline", "core": "seamline.core", "components": "seamline.components",
           "app": "seamline.app"}  # fmt: skip
STAGES = ("data", "prepare", "models", "predict", "vector", "optimise", "serve", "monitor", "demo")
"""``seamline.core`` sub-packages in pipeline order: a module imports only earlier stages
(and the shared modules directly in ``core``); ``demo`` may use them all, none uses it."""
UI = ("panel", "holoviews", "geoviews", "bokeh")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *(p for p in parts if p != "__init__")))
            modules[name] = path
    return modules


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every import in the file, at any depth; name is None for ``import m``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def _target(module: str, name: str | None) -> str | None:
    """The Seamline module an import points at (a submodule imported by name included)."""
    if name is not None and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module if module in MODULES else None


GRAPH = {
    source: {t for m, n in _imports(path) if (t := _target(m, n)) and t != source}
    for source, path in MODULES.items()
}


def _stage(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["seamline", "core"] or len(parts) < 4:
        return None  # core's shared modules (errors, hardware, metrics) and packages
    return STAGES.index(parts[2])


def test_only_seamline_is_installed_as_an_import_name():
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {p.split(".")[0] for p in setuptools["packages"]} == {"seamline"}
    assert set(setuptools["package-dir"]) == set(FOLDERS.values())
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages == set(setuptools["packages"])  # every sub-package is installed
    for module in ("seamline.core.data.io", "seamline.components.scene_view", "seamline.app.cli"):
        assert Path(importlib.import_module(module).__file__).is_relative_to(ROOT)


def test_no_import_cycles():
    colour: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        colour[node] = 1
        for nxt in sorted(GRAPH[node]):
            if colour.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in colour:
                visit(nxt, [*path, nxt])
        colour[node] = 2

    for module in sorted(GRAPH):
        if module not in colour:
            visit(module, [module])
    assert len(colour) == len(MODULES)


def test_no_private_names_imported_across_modules():
    private = [
        f"{source}: {module}.{name}"
        for source, path in MODULES.items()
        for module, name in _imports(path)
        if module.startswith("seamline") and name and name.startswith("_")
    ]
    assert private == []


def test_stages_point_back_and_layers_point_down():
    wrong = []
    for source, targets in GRAPH.items():
        for target in targets:
            layer_s, layer_t = source.split(".")[1], target.split(".")[1]
            if layer_s == "core" and layer_t in ("components", "app"):
                wrong.append(f"{source} -> {target} (core imports the UI)")
            if layer_s == "components" and layer_t == "app":
                wrong.append(f"{source} -> {target} (a component imports the app)")
            s, t = _stage(source), _stage(target)
            if t is not None and s is not None and t > s and STAGES[s] != "demo":
                wrong.append(f"{source} -> {target} (a later stage)")
            if t == STAGES.index("demo") and layer_s == "core" and s != t:
                wrong.append(f"{source} -> {target} (production code uses the demo)")
    assert wrong == []
    assert sum(map(len, GRAPH.values())) > 50  # the graph was really read


def test_core_never_imports_the_ui_libraries():
    ui = [
        f"{name}: {module}"
        for name, path in MODULES.items()
        if name.startswith("seamline.core")
        for module, _ in _imports(path)
        if module.split(".")[0] in UI
    ]
    assert ui == []


def test_no_module_is_over_the_size_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize("name", seamline.__all__)
def test_public_api_names_resolve(name):
    value = getattr(seamline, name)
    assert value is getattr(importlib.import_module(value.__module__), value.__name__)
    assert value.__doc__, f"seamline.{name} has no docstring"
