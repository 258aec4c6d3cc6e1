"""Imports point one way: interfaces → experiments → api → the core pipeline (publish → executor → writer → plan →
sources → recipe), read from the source with `ast`, so a new upward import fails here, not in a cycle at run time."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mergehub"

LAYERS = {
    "errors": 0,
    "pages": 0,  # torch.empty in huge pages: methods, sources and the executor allocate with it
    "safe_yaml": 1,
    "units": 1,
    "workers": 1,
    "architecture": 1,
    "eval_tasks": 1,
    "recipe": 2,
    "methods": 2,
    "sources": 3,
    "vocab": 3,
    "moe": 3.5,  # MoE configs, output formats and routers: what plan.py records of an MoE (moe.layout)
    "plan": 4,
    "moe.plan": 4.5,  # an MoE config planned: builds a Plan
    "stages": 4.5,  # multi-stage recipes: stages planned against earlier stages' Plans
    "writer": 5,
    "extraction": 5,  # LoRA extraction planned as jobs of the plan
    "executor": 6,
    "output": 6,
    "publish": 7,
    "evaluation": 8,
    "gguf": 8,
    "api": 9,
    "experiments": 10,  # sweeps and searches: many merges through the api
    "": 11,  # the package itself, `mergehub/__init__.py`: it re-exports the api
    "interfaces": 12,
    "__main__": 13,
    "action": 13,
    "demo": 13,  # entry points (`python -m ...`) that run an interface
}
"""Each top-level module or package of mergehub, by layer: a module imports only from its own package or lower
layers."""


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The mergehub modules a file imports (`from mergehub import safe_yaml` is `mergehub.safe_yaml`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "mergehub"}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] == "mergehub"
        ):
            found |= {f"mergehub.{a.name}" for a in node.names} if node.module == "mergehub" else {node.module}
    return found


def _group(module: str) -> str:
    """The top-level module or package a module belongs to (`publish` for `mergehub.publish.card`), or the
    subpackage's module with a layer of its own (`moe.plan`); "" for the package itself and the names it
    re-exports (`from mergehub import run_merge`)."""
    parts = module.split(".")
    if len(parts) > 2 and ".".join(parts[1:3]) in LAYERS:
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""


MODULES = sorted((_name(p), p) for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert {_group(name) for name, _ in MODULES} <= set(LAYERS)


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[name for name, _ in MODULES])
def test_imports_point_down(module, path):
    group = _group(module)
    upward = sorted(
        imported
        for imported in _imports(path)
        if _group(imported) != group and LAYERS[_group(imported)] >= LAYERS[group]
    )
    assert not upward, f"{module} (layer {LAYERS[group]}) imports {upward} from its own layer or above"


@pytest.mark.parametrize(
    ("module", "path"), [(n, p) for n, p in MODULES if _group(n) == "methods"], ids=lambda v: str(v)
)
def test_methods_import_only_torch_errors_and_pages(module, path):
    assert {i for i in _imports(path) if _group(i) not in ("methods", "errors", "pages")} == set()
    third_party = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.level == 0
            else []
        )
        third_party |= {n.split(".")[0] for n in names if n}
    assert third_party - set(sys.stdlib_module_names) <= {"torch", "mergehub"}


def test_core_never_imports_the_api_or_the_interfaces():
    core = [(name, path) for name, path in MODULES if LAYERS[_group(name)] < LAYERS["api"]]
    assert len(core) > 40
    for name, path in core:
        assert not {i for i in _imports(path) if _group(i) in ("api", "interfaces", "")}, name


def test_the_cli_starts_without_torch():
    """`mergehub --help` and the package import load torch only when a command needs it (start-up time)."""
    import subprocess
    import sys

    check = "import sys, mergehub, mergehub.interfaces.cli; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1000:]
    done = subprocess.run([sys.executable, "-m", "mergehub", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "merge" in done.stdout
