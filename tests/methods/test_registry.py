"""The method table: built once from declarations, without import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mergehub.errors import UnknownMethodError
from mergehub.methods import all_methods, get_method, method_names, registry

METHODS_DIR = Path(registry.__file__).parent
MODULES = sorted(p.stem for p in METHODS_DIR.glob("*.py") if p.stem != "__init__")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Each module a file imports (`from a import b` counts as a and a.b), and whether inside a function."""
    tree = ast.parse(path.read_text())
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f) if n is not f}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in nested) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, id(node) in nested))
            found += [(f"{node.module}.{alias.name}", id(node) in nested) for alias in node.names]
    return found


def test_each_module_imports_first_in_a_fresh_interpreter() -> None:
    """The registry first, then each method module with every mergehub module forgotten (torch stays loaded)."""
    code = f"""
import importlib, sys
for module in {["registry", *MODULES]!r}:
    for name in [n for n in sys.modules if n == "mergehub" or n.startswith("mergehub.")]:
        del sys.modules[name]
    importlib.import_module("mergehub.methods." + module)
    print(module, len(sys.modules["mergehub.methods.registry"].all_methods()))
"""
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [w for m in ["registry", *MODULES] for w in (m, str(len(all_methods())))]


@pytest.mark.parametrize("module", [m for m in MODULES if m != "registry"])
def test_method_modules_never_import_the_registry(module: str) -> None:
    imported = {name for name, _ in _imports(METHODS_DIR / f"{module}.py")}
    assert "mergehub.methods.registry" not in imported and "mergehub.methods" not in imported


def test_the_registry_imports_at_module_level_only() -> None:
    assert not [name for name, inside in _imports(METHODS_DIR / "registry.py") if inside]


def test_the_table_is_built_once_and_read_only() -> None:
    table = all_methods()
    assert table is all_methods()
    with pytest.raises(TypeError):
        table["mine"] = table["linear"]  # type: ignore[index]
    assert get_method("ties") is table["ties"]


def test_names_are_the_table_keys_sorted() -> None:
    assert method_names() == sorted(all_methods()) and len(method_names()) == 20
    assert all(spec.name == name for name, spec in all_methods().items())


def test_an_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownMethodError, match="Unknown merge_method 'tise'") as error:
        get_method("tise")
    assert error.value.hint == f"Use one of: {', '.join(method_names())}."
