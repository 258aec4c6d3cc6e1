"""mergehub.experiments.variants: the --vary grammar, grids, random samples, and variants applied to recipes."""

from __future__ import annotations

import pytest
import yaml

from mergehub.errors import RecipeError
from mergehub.experiments.variants import Variant, apply_variant, grid, parse_path, parse_vary, sample, set_value

RECIPE = """\
merge_method: ties
base_model: org/base
models:
  - model: org/base
  - model: org/tuned
    parameters:
      weight: 0.5
      density: [1, 0.5]
parameters:
  t:
    - filter: self_attn
      value: 0.3
    - value: 0.5
dtype: bfloat16
"""


def test_values_are_lists_ranges_and_yaml():
    assert parse_vary("models[1].parameters.weight=0.3,0.5,0.7").values == (0.3, 0.5, 0.7)
    ranged = parse_vary("parameters.density=0.2:0.8:4")
    assert ranged.values == (0.2, 0.4, 0.6, 0.8) and ranged.bounds == (0.2, 0.8)
    assert parse_vary("merge_method=linear,ties").values == ("linear", "ties")
    assert parse_vary("parameters.t=[0,0.5,1],[1,0.5,0]").values == ([0, 0.5, 1], [1, 0.5, 0])
    assert parse_vary("parameters.t=0:1:1").values == (0.0,)
    assert parse_vary("parameters.weight=1").numeric and not parse_vary("merge_method=a,b").numeric


@pytest.mark.parametrize(
    "text, found",
    [
        ("models[1].parameters.weight", ["models", 1, "parameters", "weight"]),
        ("parameters.t[self_attn]", ["parameters", "t", "[self_attn]"]),
        ("models[org/tuned].parameters.density", ["models", "[org/tuned]", "parameters", "density"]),
        ("slices[0].sources[1].parameters.t", ["slices", 0, "sources", 1, "parameters", "t"]),
    ],
)
def test_paths_parse_into_keys_indices_and_names(text, found):
    assert parse_path(text) == found


@pytest.mark.parametrize(
    "bad", ["models[1].parameters.weight", "=0.5", "parameters..t=1", "[0].weight=1", "parameters.t=", "p=1,,2"]
)
def test_malformed_vary_is_a_recipe_error(bad):
    with pytest.raises(RecipeError) as caught:
        parse_vary(bad)
    assert caught.value.hint


def test_set_value_addresses_indices_models_filters_and_creates_mappings():
    data = yaml.safe_load(RECIPE)
    set_value(data, "models[0].parameters.weight", 0.7)  # `parameters` created
    set_value(data, "models[org/tuned].parameters.density", [0.2, 0.4])  # a gradient as a whole
    set_value(data, "parameters.t[self_attn]", 0.9)  # a filter's value
    set_value(data, "parameters.lambda", 1.5)
    set_value(data, "merge_method", "dare_ties")
    assert data["models"][0]["parameters"] == {"weight": 0.7}
    assert data["models"][1]["parameters"]["density"] == [0.2, 0.4]
    assert data["parameters"]["t"] == [{"filter": "self_attn", "value": 0.9}, {"value": 0.5}]
    assert data["parameters"]["lambda"] == 1.5 and data["merge_method"] == "dare_ties"


@pytest.mark.parametrize(
    "path, message",
    [
        ("models[5].parameters.weight", "index 5 is out of range; models has 2 entries"),
        ("parameters.t[mlp]", "no entry of parameters.t has model or filter 'mlp'"),
        ("models.parameters", "models is a list"),
        ("merge_method.name", "merge_method is 'ties', not a mapping"),
        ("dtype[0]", "dtype is not a list"),
    ],
)
def test_paths_that_do_not_fit_say_where(path, message):
    with pytest.raises(RecipeError, match="--vary path") as caught:
        set_value(yaml.safe_load(RECIPE), path, 1)
    assert message in caught.value.message


def test_grid_is_every_combination_first_vary_slowest():
    variants = grid([parse_vary("parameters.density=0.1,0.2"), parse_vary("merge_method=ties,dare_ties,della")])
    assert [v.values for v in variants] == [
        (("parameters.density", d), ("merge_method", m)) for d in (0.1, 0.2) for m in ("ties", "dare_ties", "della")
    ]
    assert [v.name for v in variants][:2] == ["v000", "v001"]
    assert variants[4].label == "parameters.density=0.2, merge_method=dare_ties"


def test_samples_are_seeded_and_within_ranges():
    varies = [parse_vary("parameters.density=0.2:0.8:4"), parse_vary("merge_method=ties,dare_ties")]
    first, again, other = sample(varies, 6, seed=3), sample(varies, 6, seed=3), sample(varies, 6, seed=4)
    assert first == again and first != other and len(first) == 6
    for variant in first:
        values = dict(variant.values)
        assert 0.2 <= values["parameters.density"] <= 0.8 and values["merge_method"] in ("ties", "dare_ties")
    assert len({dict(v.values)["parameters.density"] for v in first}) == 6  # drawn from the range, not its 4 points


def test_repeated_or_missing_vary_is_refused():
    with pytest.raises(RecipeError, match="more than once"):
        grid([parse_vary("parameters.t=1"), parse_vary("parameters.t=2")])
    with pytest.raises(RecipeError, match="Nothing to vary"):
        grid([])
    with pytest.raises(RecipeError, match="at least 1"):
        sample([parse_vary("parameters.t=1")], 0, seed=0)


def test_apply_variant_gives_a_valid_recipe_or_names_the_variant():
    recipe, text = apply_variant(
        RECIPE, Variant(2, (("models[1].parameters.weight", 0.25), ("parameters.t[self_attn]", 0.1)))
    )
    assert recipe.models[1].parameters["weight"] == 0.25
    assert yaml.safe_load(text)["parameters"]["t"][0] == {"filter": "self_attn", "value": 0.1}
    assert yaml.safe_load(RECIPE)["models"][1]["parameters"]["weight"] == 0.5  # the source text is untouched
    with pytest.raises(RecipeError, match=r"Variant v007 \(dtype=float8\)"):
        apply_variant(RECIPE, Variant(7, (("dtype", "float8"),)))
