"""mergekit-moe configs: the schema read unchanged, and mergekit's rules for a working MoE, each with where it is."""

from __future__ import annotations

import pytest
import yaml

from mergehub.errors import RecipeError
from mergehub.moe.config import looks_like_moe_config, parse_moe_config


def config(**changes) -> dict:
    data = {
        "base_model": "org/base",
        "gate_mode": "hidden",
        "experts": [
            {"source_model": "org/math", "positive_prompts": ["solve", "integral"]},
            {"source_model": "org/code", "positive_prompts": ["python"], "negative_prompts": ["poem"]},
        ],
    }
    data.update(changes)
    return data


def parse(data: dict):
    return parse_moe_config(yaml.safe_dump(data, sort_keys=False))


def test_schema_and_defaults_follow_mergekit_moe():
    parsed = parse(config())
    assert parsed.experts_per_token == 2 and parsed.dtype is None and parsed.shared_experts is None
    assert [str(r) for r in parsed.referenced_models()] == ["org/base", "org/math", "org/code"]
    assert parsed.experts[1].prompt_set().negative == ("poem",)
    parsed.check()
    assert parse(config(dtype="torch.bfloat16")).dtype == "bfloat16"


def test_unknown_keys_are_warnings_with_lines():
    parsed = parse(config(gates="hidden", experts=[{"source_model": "org/a", "positive_prompts": ["x"], "noise": 0.1}]))
    assert [(w.location, w.line) for w in parsed.warnings] == [("experts[0].noise", 7), ("gates", 8)]
    assert "noise_scale" in parsed.warnings[0].message


@pytest.mark.parametrize(
    ("changes", "message", "location"),
    [
        ({"gate_mode": "hiden"}, "not a gate mode", "gate_mode"),
        ({"experts_per_token": 0}, "at least 1", "experts_per_token"),
        ({"experts_per_token": 3}, "only 2 experts", "experts_per_token"),
        (
            {"experts": [{"source_model": "org/a", "positive_prompts": ["x"]}, {"source_model": "org/b"}]},
            "no positive_prompts",
            "experts[1]",
        ),
        (
            {
                "experts": [
                    {"source_model": "org/a", "positive_prompts": ["x"]},
                    {"source_model": "org/b", "positive_prompts": ["x"]},
                ]
            },
            "same for every expert",
            "experts",
        ),
        (
            {
                "experts": [
                    {"source_model": "org/a", "positive_prompts": ["x"]},
                    {"source_model": "org/a", "positive_prompts": ["y"]},
                ]
            },
            "every expert is org/a",
            "experts",
        ),
        (
            {"shared_experts": [{"source_model": "org/a", "positive_prompts": ["x"]}, {"source_model": "org/b"}]},
            "some shared experts",
            "shared_experts",
        ),
    ],
)
def test_mergekit_rules_are_errors_with_locations(changes, message, location):
    parsed = parse(config(**changes))
    with pytest.raises(RecipeError, match=message) as info:
        parsed.check()
    assert info.value.location == location and info.value.line is not None


def test_random_gates_need_no_prompts_and_same_models_can_be_allowed():
    same = [{"source_model": "org/a", "positive_prompts": ["x"]}, {"source_model": "org/a", "positive_prompts": ["y"]}]
    parse(config(experts=same)).check(allow_all_same=True)
    parse(config(gate_mode="random", experts=[{"source_model": "org/a"}, {"source_model": "org/a"}])).check()
    with pytest.raises(RecipeError, match="no positive_prompts"):  # mergekit exempts only `random`
        parse(
            config(gate_mode="uniform_random", experts=[{"source_model": "org/a"}, {"source_model": "org/b"}])
        ).check()


def test_gated_experts_include_shared_ones_with_prompts_or_random_gates():
    shared = [{"source_model": "org/s", "positive_prompts": ["all"]}]
    assert len(parse(config(shared_experts=shared)).gated_experts()) == 3
    assert len(parse(config(shared_experts=[{"source_model": "org/s"}])).gated_experts()) == 2
    assert len(parse(config(gate_mode="random", shared_experts=[{"source_model": "org/s"}])).gated_experts()) == 3


def test_moe_configs_are_told_from_merge_recipes():
    assert looks_like_moe_config(config())
    assert not looks_like_moe_config({"merge_method": "linear", "models": []})
    assert not looks_like_moe_config([1, 2])


def test_bad_yaml_and_bad_types_are_recipe_errors():
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_moe_config("base_model: [\n")
    with pytest.raises(RecipeError, match="experts_per_token"):
        parse(config(experts_per_token="two"))
