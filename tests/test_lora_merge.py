"""Recipes with `model+adapter` references: mergehub streams the adapter in and matches mergekit (which merges it with
peft first), and the card records the adapter as a parent, pinned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mergehub import plan_merge, run_merge
from tests.corpus import assert_mergekit_yaml_agrees, run_mergehub, run_mergekit
from tests.helpers import make_lora

pytest.importorskip("mergekit")
pytest.importorskip("peft")

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def adapters(family, tmp_path_factory) -> dict[str, Path]:
    """Adapters of several kinds on the base and on a fine-tune of the family."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "rank8": make_lora(family[0], root / "rank8", seed=1, r=8, lora_alpha=16, target_modules=LINEAR),
        "rslora": make_lora(
            family[1], root / "rslora", seed=2, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True
        ),
        "patterns": make_lora(
            family[2],
            root / "patterns",
            seed=3,
            r=4,
            lora_alpha=4,
            target_modules=LINEAR,
            rank_pattern={"v_proj": 2, "mlp.up_proj": 6},
            alpha_pattern={"o_proj": 3},
        ),
        "saved": make_lora(
            family[0],
            root / "saved",
            seed=4,
            r=2,
            lora_alpha=4,
            target_modules=["down_proj"],
            modules_to_save=["lm_head"],
        ),
        "embedding": make_lora(
            family[0], root / "embedding", seed=5, r=4, lora_alpha=4, target_modules=["embed_tokens", "k_proj"]
        ),
    }


def _recipes(family: list[Path], a: dict[str, Path]) -> dict[str, dict]:
    base, one, two = map(str, family)
    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": f"{base}+{a['rank8']}", "parameters": {"weight": 0.6}},
                {"model": one, "parameters": {"weight": 0.4}},
            ],
        },
        "ties": {
            "merge_method": "ties",
            "base_model": f"{base}+{a['saved']}",
            "parameters": {"density": 0.5},
            "models": [
                {"model": f"{one}+{a['rslora']}", "parameters": {"weight": 0.5}},
                {"model": f"{two}+{a['patterns']}", "parameters": {"weight": 0.5}},
            ],
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": f"{base}+{a['embedding']}",
            "parameters": {"t": [0, 0.3, 1]},
            "slices": [
                {
                    "sources": [
                        {"model": f"{base}+{a['embedding']}", "layer_range": [0, 4]},
                        {"model": two, "layer_range": [0, 4]},
                    ]
                }
            ],
        },
    }


@pytest.mark.parametrize("name", ["linear", "ties", "slerp"])
def test_lora_references_merge_as_mergekit_does(family, adapters, tmp_path, name):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(yaml.safe_dump({**_recipes(family, adapters)[name], "dtype": "float32"}, sort_keys=False))
    theirs, ours = run_mergekit(recipe, tmp_path / "mergekit"), run_mergehub(recipe, tmp_path / "mergehub")
    assert theirs.tensors is not None, theirs.error
    assert ours.tensors is not None, ours.error
    assert set(ours.tensors) == set(theirs.tensors)
    for tensor, value in theirs.tensors.items():
        torch.testing.assert_close(ours.tensors[tensor], value, rtol=0, atol=1e-5, msg=tensor)
    assert not (tmp_path / "mergehub" / "lora-cache").exists()  # nothing merged to disk first


def test_mergekit_yaml_command_agrees(family, adapters, tmp_path):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(yaml.safe_dump({**_recipes(family, adapters)["ties"], "dtype": "float32"}, sort_keys=False))
    assert_mergekit_yaml_agrees(recipe, tmp_path, "--lora-merge-cache", str(tmp_path / "cache"))


def test_adapter_is_a_pinned_parent_in_plan_card_and_lineage(family, adapters, tmp_path, hub):
    hub.add_repo("org/base", {p.name: p.read_bytes() for p in family[0].iterdir()})
    readme = b"---\nlicense: apache-2.0\nbase_model: org/base\nlibrary_name: peft\n---\n# A LoRA\n"
    hub.add_repo("org/lora", {**{p.name: p.read_bytes() for p in adapters["rank8"].iterdir()}, "README.md": readme})
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "merge_method": "linear",
                "dtype": "float32",
                "models": [
                    {"model": "org/base+org/lora", "parameters": {"weight": 0.5}},
                    {"model": str(family[1]), "parameters": {"weight": 0.5}},
                ],
            }
        )
    )
    plan = plan_merge(recipe)
    entry = plan.models[0]
    assert entry.adapter is not None and entry.adapter.path == "org/lora" and len(entry.adapter.revision) == 40
    assert (
        entry.path == "org/base" and str(entry.pinned) == f"org/base@{entry.revision}+org/lora@{entry.adapter.revision}"
    )
    assert type(plan).from_json(plan.to_json()) == plan
    assert f"LoRA adapter org/lora @ {entry.adapter.revision}" in plan.describe()
    assert [(f.file, f.verified) for f in plan.input_files] == [
        ("adapter:adapter_model.safetensors", True),
        ("model.safetensors", True),
    ]

    result = run_merge(recipe, tmp_path / "out")
    card = (result.out_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == ["org/base", "org/lora"]
    assert front["mergehub"]["adapters"] == {"org/lora": "org/base"}
    assert front["mergehub"]["parents"]["org/lora"] == entry.adapter.revision
    assert "[org/lora](https://huggingface.co/org/lora) (LoRA adapter, merged into org/base)" in card
    assert f"org/lora/commit/{entry.adapter.revision}" in card
    assert front["mergehub"]["verified_inputs"] == ["org/lora/adapter_model.safetensors", "org/base/model.safetensors"]
    assert "|adapter|" in card  # the lineage graph's edge to the adapter
    reference = json.loads((result.out_dir / "config.json").read_text())
    assert reference["num_hidden_layers"] == 4
