"""`modules:` recipes on a model with several modules (a tiny Mistral 3: text decoder, Pixtral tower, projector),
compared with mergekit 0.1.5 tensor by tensor, and the output config's layer counts."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from mergehub import RecipeError, plan_merge
from tests.corpus import VISION_LAYERS, TinyModels, run_mergehub, run_mergekit

pytest.importorskip("mergekit")
TEXT_LAYERS = 4


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    models = TinyModels(tmp_path_factory.mktemp("vlm"))
    return [str(models.get("vlm", TEXT_LAYERS, i)) for i in range(3)]


def _modules_recipe(a: str, b: str, c: str) -> dict:
    return {
        "merge_method": "slerp",
        "base_model": a,
        "modules": {
            "text_decoder": {
                "slices": [
                    {
                        "sources": [{"model": a, "layer_range": [0, 3]}, {"model": b, "layer_range": [0, 3]}],
                        "parameters": {"t": 0.2},
                    },
                    {"sources": [{"model": a, "layer_range": [2, 4]}, {"model": b, "layer_range": [2, 4]}]},
                ],
                "parameters": {"t": [0.1, 0.9]},
            },
            "vision_tower": {"models": [{"model": a}, {"model": c}], "parameters": {"t": 0.7}},
            "multi_modal_projector": {"models": [{"model": a}, {"model": b}]},
        },
        "parameters": {"t": 0.5},
    }


def test_modules_merge_each_module_with_its_own_slices_and_parameters_as_mergekit_does(vlm, write_recipe, tmp_path):
    recipe = write_recipe(_modules_recipe(*vlm))
    ours, theirs = run_mergehub(recipe, tmp_path / "ours"), run_mergekit(recipe, tmp_path / "theirs")
    assert theirs.tensors is not None and ours.tensors is not None, (theirs.error, ours.error)
    assert set(ours.tensors) == set(theirs.tensors)
    assert "language_model.model.layers.4.mlp.up_proj.weight" in ours.tensors  # 3 + 2 stacked text layers
    assert f"vision_tower.transformer.layers.{VISION_LAYERS - 1}.ffn_norm.weight" in ours.tensors
    for name, tensor in theirs.tensors.items():
        torch.testing.assert_close(ours.tensors[name], tensor, rtol=0, atol=1e-5, msg=name)
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert (
        config["text_config"]["num_hidden_layers"] == 5
        and config["vision_config"]["num_hidden_layers"] == VISION_LAYERS
    )
    assert not ours.warnings


def test_a_module_left_out_is_left_out_of_the_output_with_a_warning(vlm, write_recipe, tmp_path):
    data = _modules_recipe(*vlm)
    del data["modules"]["multi_modal_projector"]
    recipe = write_recipe(data)
    ours, theirs = run_mergehub(recipe, tmp_path / "ours"), run_mergekit(recipe, tmp_path / "theirs")
    assert theirs.tensors is not None and ours.tensors is not None
    assert set(ours.tensors) == set(theirs.tensors) and not any("projector" in n for n in ours.tensors)
    (warning,) = ours.warnings
    assert "multi_modal_projector" in warning and "4 tensors are left out of the output" in warning


def test_an_unknown_module_names_the_modules_there_are(vlm, write_recipe):
    data = _modules_recipe(*vlm)
    data["modules"]["vision_model"] = data["modules"].pop("vision_tower")
    with pytest.raises(RecipeError, match="has no module 'vision_model'") as info:
        plan_merge(write_recipe(yaml.safe_dump(data, sort_keys=False)))
    assert "text_decoder, multi_modal_projector, vision_tower" in (info.value.hint or "")
    assert info.value.location == "modules.vision_model" and info.value.line


def test_a_text_model_has_one_module_named_default(family, write_recipe, tmp_path):
    slices = [{"sources": [{"model": str(p), "layer_range": [0, 4]} for p in family[:2]]}]
    recipe = write_recipe(
        {"merge_method": "linear", "modules": {"default": {"slices": slices}}, "parameters": {"weight": 1}}
    )
    ours, theirs = run_mergehub(recipe, tmp_path / "ours"), run_mergekit(recipe, tmp_path / "theirs")
    assert ours.tensors is not None and theirs.tensors is not None
    for name, tensor in theirs.tensors.items():
        torch.testing.assert_close(ours.tensors[name], tensor, rtol=0, atol=1e-6)
