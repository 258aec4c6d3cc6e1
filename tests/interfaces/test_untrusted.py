"""The rules for recipes written by someone we do not trust (Space visitors, pull requests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergehub.errors import ModelReferenceError, RecipeError
from mergehub.interfaces.untrusted import (
    PULL_REQUEST_LIMITS,
    check_model_reference,
    check_pull_request_extraction,
    check_pull_request_recipe,
    check_untrusted_recipe,
    recipe_references,
)
from mergehub.recipe import ModelRef, parse_recipe

TWO = "merge_method: linear\nmodels:\n  - model: {a}\n  - model: {b}\n"


def test_recipe_references_include_tokenizer_sources():
    recipe = parse_recipe(TWO.format(a="org/a", b="org/b@v1") + "tokenizer_source: model:org/tok\n")
    assert recipe_references(recipe) == [ModelRef("org/a"), ModelRef("org/b", "v1"), ModelRef("org/tok")]


def test_pull_request_rules_refuse_local_paths_unless_allowed(tmp_path: Path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "a").write_text("a file that shadows the Hub ID org/a")
    local = TWO.format(a="org/b", b="models/mine")
    with pytest.raises(ModelReferenceError, match="not allowed here") as info:
        check_pull_request_recipe(local, tmp_path)
    assert info.value.line == 4 and "allow-local-models" in info.value.hint
    assert check_pull_request_recipe(local, tmp_path, allow_local=True).referenced_models()[1].path == "models/mine"
    with pytest.raises(ModelReferenceError, match="outside the checkout"):
        check_pull_request_recipe(TWO.format(a="org/b", b=".."), tmp_path / "models", allow_local=True)
    with pytest.raises(ModelReferenceError, match="'org/a' is not allowed here") as info:
        check_pull_request_recipe(TWO.format(a="org/a", b="org/b"), tmp_path)
    assert info.value.line == 3


def test_pull_request_limits_count_tokenizer_sources_and_bytes(tmp_path: Path):
    models = "".join(f"  - model: org/m{i}\n" for i in range(PULL_REQUEST_LIMITS.max_models))
    recipe = "merge_method: linear\nmodels:\n" + models
    assert len(check_pull_request_recipe(recipe, tmp_path).referenced_models()) == PULL_REQUEST_LIMITS.max_models
    with pytest.raises(RecipeError, match="names 9 models; at most 8 are allowed in pull requests"):
        check_pull_request_recipe(recipe + "tokenizer_source: model:org/extra\n", tmp_path)
    with pytest.raises(RecipeError, match="at most 20,000 are allowed in pull requests"):
        check_pull_request_recipe(recipe + "#" * PULL_REQUEST_LIMITS.max_recipe_bytes, tmp_path)


def test_lora_references_are_checked_on_both_sides(tmp_path: Path):
    (tmp_path / "loras" / "mine").mkdir(parents=True)
    assert check_model_reference(" org/a@v1+org/lora ") == "org/a@v1+org/lora"
    with pytest.raises(ModelReferenceError, match="'/srv/lora' is not allowed here"):
        check_model_reference("org/a+/srv/lora")
    hub = TWO.format(a="org/a+org/lora@v2", b="org/b")
    assert check_untrusted_recipe(hub, PULL_REQUEST_LIMITS).referenced_models()[0].adapter == ModelRef("org/lora", "v2")
    assert check_pull_request_recipe(hub, tmp_path).referenced_models()[0].adapter == ModelRef("org/lora", "v2")
    local = TWO.format(a="org/a+loras/mine", b="org/b")
    with pytest.raises(ModelReferenceError, match="not allowed here") as info:
        check_pull_request_recipe(local, tmp_path)
    assert info.value.line == 3
    assert check_pull_request_recipe(local, tmp_path, allow_local=True).referenced_models()[0].adapter.path == (
        "loras/mine"
    )


def test_pull_request_extraction_files_follow_the_same_rules(tmp_path: Path):
    (tmp_path / "models" / "tuned").mkdir(parents=True)
    text = "extract_lora:\n  base: org/base\n  model: {model}\n  rank: 8\n"
    assert check_pull_request_extraction(text.format(model="org/tuned+org/lora"), tmp_path).model.adapter is not None
    with pytest.raises(ModelReferenceError, match="not allowed here") as info:
        check_pull_request_extraction(text.format(model="models/tuned"), tmp_path)
    assert "allow-local-models" in info.value.hint
    spec = check_pull_request_extraction(text.format(model="models/tuned"), tmp_path, allow_local=True)
    assert spec.model.path == "models/tuned"
    with pytest.raises(RecipeError, match="at most 20,000 are allowed in pull requests"):
        check_pull_request_extraction(text.format(model="org/tuned") + "#" * 20_000, tmp_path)
