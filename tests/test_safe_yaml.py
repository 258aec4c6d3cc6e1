"""Recipes and other people's YAML: aliases refused, size capped, errors quote bounded excerpts."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from mergehub.errors import RecipeError
from mergehub.recipe import load_recipe, parse_recipe


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A ~600-byte recipe whose `tokenizer.tokens` expands to width**levels strings once aliases are followed."""
    lines = [
        "merge_method: linear",
        "models:",
        "  - model: org/a",
        "  - model: org/b",
        "tokenizer:",
        "  source: union",
        "  tokens:",
    ]
    lines.append("    t0: &a0 [" + ", ".join(["lol"] * width) + "]")
    lines += [f"    t{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_once_by_the_cli_with_a_short_message(tmp_path):
    recipe = tmp_path / "bomb.yml"
    recipe.write_text(alias_bomb())
    assert len(recipe.read_bytes()) < 700
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "mergehub", "merge", "--dry-run", str(recipe)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 30
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "anchors and aliases" in run.stderr and "line 9" in run.stderr
    assert len(run.stderr) < 1000


def test_aliases_are_refused_even_when_harmless():
    from mergehub import safe_yaml

    text = (
        "merge_method: linear\nmodels:\n  - {model: org/a, parameters: &w {weight: 1}}\n  - {model: org/b, "
        "parameters: *w}\n"
    )
    with pytest.raises(RecipeError, match="anchors and aliases .* at line 4") as info:
        parse_recipe(text)
    assert isinstance(info.value.__cause__, safe_yaml.AliasRefused) and info.value.__cause__.problem_mark.line == 3
    assert "in full" in info.value.hint


def test_an_oversized_recipe_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    from mergehub import safe_yaml

    recipe = tmp_path / "big.yml"
    numbers = ", ".join(["0.5"] * 70_000)  # ~350 KB; at 48 MB this once took > 5 minutes and 9.8 GB
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: org/a\n    parameters:\n      weight: [{numbers}]\n")
    read = []
    real_open = open

    def spy(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if str(path) == str(recipe):
            original = handle.read
            handle.read = lambda n=-1: read.append(n) or original(n)
        return handle

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(RecipeError, match=r"is 350,\d{3} bytes; mergehub reads at most 262,144") as info:
        load_recipe(recipe)
    assert read == [safe_yaml.DEFAULT_MAX_RECIPE_BYTES + 1]
    assert "MERGEHUB_MAX_RECIPE_BYTES" in info.value.hint
    monkeypatch.setenv("MERGEHUB_MAX_RECIPE_BYTES", "2000000")
    assert load_recipe(recipe).models[0].parameters["weight"][0] == 0.5


def test_the_cap_variable_is_checked(monkeypatch):
    monkeypatch.setenv("MERGEHUB_MAX_RECIPE_BYTES", "lots")
    with pytest.raises(RecipeError, match="MERGEHUB_MAX_RECIPE_BYTES='lots' is not a positive number"):
        parse_recipe("merge_method: linear\n")


def test_errors_quote_an_excerpt_never_the_whole_value():
    huge = "org/" + "x" * 200_000
    with pytest.raises(RecipeError) as info:
        parse_recipe(f"merge_method: linear\nmodels:\n  - model: {huge}@\n")
    assert len(str(info.value)) < 600 and "200,005 chars" in str(info.value)
    models = "".join(f"  - model: [{i}]\n" for i in range(101))
    with pytest.raises(RecipeError) as info:
        parse_recipe(f"merge_method: linear\nmodels:\n{models}")
    assert len(str(info.value)) < 4000 and "... and 81 more" in str(info.value)
    # keys outside the schema are ignored with a warning each, quoting at most a line's worth of a long key
    warnings = parse_recipe(f"merge_method: linear\nmodels:\n  - model: org/a\n{'k' * 1000}: 1\n").warnings
    assert len(warnings) == 1 and len(str(warnings[0])) < 600 and warnings[0].line == 4


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("short", "'short'"),
        ("a" * 500, "'" + "a" * 78 + "… (500 chars)"),
        (list(range(10**6)), "[0, 1, 2"),
        ({"k": "v" * 10**6}, "{'k': 'vvv"),
        (0.25, "0.25"),
    ],
)
def test_excerpt_is_bounded_and_cheap(value, shown):
    from mergehub.errors import excerpt

    text = excerpt(value)
    assert text.startswith(shown) and len(text) <= 100


def test_a_parents_recipe_and_card_with_aliases_are_read_as_unknown_not_expanded():
    from mergehub.publish.card_data import read_card_data
    from mergehub.publish.lineage import _parse_recipe

    assert _parse_recipe(alias_bomb()) == (None, [], set())
    card = "---\nlicense: mit\ntags: &t [a, b]\nmore: *t\n---\n# Card\n"
    assert read_card_data(card) is None
    assert read_card_data("---\nlicense: mit\n---\n# Card\n").license == "mit"
