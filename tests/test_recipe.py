"""Recipe parsing (mergekit's schema) and parameter setting evaluation."""

from __future__ import annotations

import pytest

from mergehub.recipe import ModelRef, RecipeError, evaluate_setting, load_recipe, parse_recipe

SLERP = """
merge_method: slerp
base_model: org/base
slices:
  - sources:
      - model: org/base
        layer_range: [0, 32]
      - model: org/other@v1.0
        layer_range: [0, 32]
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""


def test_parses_a_lazymergekit_slerp_recipe():
    recipe = parse_recipe(SLERP)
    assert recipe.merge_method == "slerp"
    assert recipe.referenced_models() == [ModelRef("org/base"), ModelRef("org/other", "v1.0")]
    assert recipe.parameter_names() == {"t"}


@pytest.mark.parametrize(
    ("name", "t", "expected"),
    [
        ("model.layers.0.self_attn.q_proj.weight", 0.0, 0.0),
        ("model.layers.0.self_attn.q_proj.weight", 0.125, 0.25),  # halfway between 0 and 0.5
        ("model.layers.9.self_attn.q_proj.weight", 1.0, 1.0),
        ("model.layers.5.mlp.up_proj.weight", 0.5, 0.7),
        ("model.norm.weight", 0.0, 0.5),
    ],
)
def test_gradients_and_filters(name, t, expected):
    setting = parse_recipe(SLERP).parameters["t"]
    assert evaluate_setting(setting, name, t) == pytest.approx(expected)


def test_first_matching_filter_wins_and_unmatched_is_none():
    setting = parse_recipe("merge_method: x\nmodels: [{model: a}]\nparameters: {w: [{filter: attn, value: 1}, {filter: self_attn, value: 2}]}").parameters["w"]
    assert evaluate_setting(setting, "self_attn.q", 0) == 1
    assert evaluate_setting(setting, "mlp", 0) is None


def test_scalars_and_discrete_lists():
    assert evaluate_setting(0.3, "x", 0.9) == 0.3
    assert evaluate_setting([True, False], "x", 0.4) is True
    assert evaluate_setting([True, False], "x", 1.0) is False


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("merge_method: linear\nmodels: [{model: a}\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("merge_method: linear\n", "exactly one of `models:` or `slices:`"),
        ("merge_method: linear\nmodels: [{model: a}]\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]\n", "exactly one of"),
        ("merge_method: linear\nmodels: [{model: a, weight: 1}]\n", r"models.0.weight: unknown key"),
        ("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [3, 1]}]}]\n", "0 <= start < end"),
        ("merge_method: linear\nmodels: [{model: a}]\ndtype: float8\n", "dtype"),
        ("merge_method: linear\nmodels: [{model: 'a+lora'}]\n", "LoRA"),
        ("merge_method: linear\nmodules: {}\n", "`modules:` recipes are not supported"),
    ],
)
def test_bad_recipes(text, pattern):
    with pytest.raises(RecipeError, match=pattern):
        parse_recipe(text)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="Cannot read recipe"):
        load_recipe(tmp_path / "nope.yml")


def test_model_ref_parsing(tmp_path):
    assert ModelRef.parse("org/name@abc123") == ModelRef("org/name", "abc123")
    assert str(ModelRef.parse("org/name@main")) == "org/name@main"
    local = tmp_path / "we@ird"
    local.mkdir()
    assert ModelRef.parse(str(local)) == ModelRef(str(local)) and ModelRef(str(local)).is_local
