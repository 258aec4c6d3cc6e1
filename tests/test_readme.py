"""README stays true: every method is documented, and CI runs the test command it gives."""

from pathlib import Path

from mergehub.methods import method_names

ROOT = Path(__file__).resolve().parents[1]


def test_every_method_has_a_row_in_the_method_table():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in method_names() if f"| `{name}` |" not in readme]
    assert not missing, f"README's method table lacks {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text()
