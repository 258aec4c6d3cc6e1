"""mergehub.experiments.genome: mergekit-evolve configurations read, genotypes decoded as mergekit-evolve decodes
them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mergehub import api
from mergehub.errors import RecipeError
from mergehub.experiments.genome import Genome, GenomeSpec, load_evolve_config
from mergehub.methods import get_method

GENOMES = [
    {"merge_method": "linear", "layer_granularity": 2, "filters": ["self_attn", "mlp"]},
    {"merge_method": "linear", "normalize": False, "allow_negative_weights": True},
    {"merge_method": "ties", "base": True, "layer_granularity": 1},
    {"merge_method": "dare_ties", "base": True, "smooth": True, "layer_granularity": 2, "filters": ["mlp"]},
    {"merge_method": "task_arithmetic", "base": "outside", "layer_granularity": 2},
    {"merge_method": "slerp", "layer_granularity": 2},
]


def _definition(case: dict, models: list[Path]) -> dict:
    definition = {k: v for k, v in case.items() if k != "base"}
    listed = [str(m) for m in (models[1:] if case.get("base") == "outside" else models)]
    definition["models"] = listed
    if case.get("base"):
        definition["base_model"] = str(models[0])
    return definition


def _comparable(recipe_data: dict) -> list[tuple]:
    """What a recipe does, tensor by tensor: the plan's method, inputs and resolved parameters."""
    method = get_method(recipe_data["merge_method"])
    data = dict(recipe_data)
    data["parameters"] = {k: v for k, v in (data.get("parameters") or {}).items() if method.param(k) is not None}
    plan = api.plan_merge(api.parse_recipe(yaml.safe_dump(data)))
    return [(j.name, j.method, j.inputs, j.base_index, tuple((k, _approx(v)) for k, v in j.params)) for j in plan.jobs]


def _approx(value):
    """Parameters compared to 1e-6: mergehub writes genotype values to 6 decimals."""
    if isinstance(value, tuple):
        return tuple(_approx(v) for v in value)
    return pytest.approx(value, abs=1e-6) if isinstance(value, float) else value


@pytest.mark.parametrize("case", GENOMES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_genotypes_decode_as_mergekit_evolve_decodes_them(case: dict, family: list[Path]):
    from mergekit.evo.genome import ModelGenome, ModelGenomeDefinition

    definition = _definition(case, family)
    theirs = ModelGenome(ModelGenomeDefinition.model_validate(definition))
    ours = Genome.for_models(GenomeSpec.model_validate(definition), api.open_model(definition["models"][0]).config())
    assert ours.shape == tuple(theirs.initial_genotype().shape)
    assert ours.initial() == pytest.approx(theirs.initial_genotype().view(-1).tolist())
    rng = np.random.default_rng(7)
    for _ in range(2):
        genotype = (rng.normal(size=ours.size) * 0.6).tolist()
        mergekit_recipe = theirs.genotype_merge_config(np.array(genotype)).model_dump(mode="json", exclude_none=True)
        assert _comparable(ours.recipe(genotype)) == _comparable(mergekit_recipe)


def test_config_is_read_and_checked(tmp_path: Path, family: list[Path]):
    config = tmp_path / "evolve.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "genome": {
                    "models": [str(family[1]), str(family[2])],
                    "merge_method": "ties",
                    "base_model": str(family[0]),
                },
                "tasks": ["mergehub_facts", {"name": "mergehub_arithmetic", "weight": 2, "metric": "exact_match,none"}],
                "limit": 5,
            }
        )
    )
    parsed = load_evolve_config(config)
    assert [(t.name, t.metric, t.weight) for t in parsed.tasks] == [
        ("mergehub_facts", "acc,none", 1.0),
        ("mergehub_arithmetic", "exact_match,none", 2.0),
    ]
    assert parsed.apply_chat_template and parsed.limit == 5
    config.write_text(
        yaml.safe_dump({"genome": {"models": [str(family[1]), str(family[2])], "merge_method": "ties"}, "tasks": ["x"]})
    )
    with pytest.raises(RecipeError, match="genome: ties needs a base_model"):
        load_evolve_config(config)
    config.write_text(
        yaml.safe_dump(
            {"genome": {"models": ["a", "b"], "merge_method": "slerp", "smooth": True, "typo": 1}, "tasks": []}
        )
    )
    with pytest.raises(RecipeError, match=r"genome.typo: Extra inputs"):
        load_evolve_config(config)
    with pytest.raises(RecipeError, match="does not divide"):
        Genome(GenomeSpec(models=["a", "b"], merge_method="linear", layer_granularity=3), layers=4)
