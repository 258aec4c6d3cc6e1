"""README stays true: its method table is the registry's, and CI runs the test command it gives."""

from pathlib import Path

from mergehub.methods import MethodSpec, ParamSpec, all_methods

ROOT = Path(__file__).resolve().parents[1]
TABLE_HEADER = "| method | what it does | parameters (default) | base model | reference |\n|---|---|---|---|---|\n"


def _default(param: ParamSpec) -> str:
    if param.required:
        return "required"
    if param.default is None:
        return "none"
    return str(param.default).lower() if isinstance(param.default, bool) else str(param.default)


def _row(spec: MethodSpec) -> str:
    params = ", ".join(f"`{p.name}`{' per model' if p.scope != 'shared' else ''} ({_default(p)})" for p in spec.params)
    base = {"required": "required", "optional": "optional", "ignored": "—"}[spec.base]
    paper = f"[paper]({spec.paper})" if spec.paper else "—"
    return f"| `{spec.name}` | {spec.summary} | {params or '—'} | {base} | {paper} |\n"


def method_table() -> str:
    """README's method table, rendered from the registry (print it to update README)."""
    return TABLE_HEADER + "".join(_row(spec) for _, spec in sorted(all_methods().items()))


def test_the_method_table_is_the_registrys() -> None:
    readme = (ROOT / "README.md").read_text()
    assert method_table() in readme, "README's method table is not the registry's: paste `python tests/test_readme.py`"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text()


if __name__ == "__main__":
    print(method_table(), end="")
