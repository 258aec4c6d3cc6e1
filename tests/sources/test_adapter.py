"""A `model+adapter` source equals peft's `merge_and_unload`, tensor by tensor; unfit or unsupported adapters fail
at plan time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergehub import AdapterError, SourceError, plan_merge
from mergehub.demo import make_tiny_llama
from mergehub.recipe import ModelRef
from mergehub.sources import open_source
from mergehub.sources.adapter import LoraSettings, parse_adapter_config, pattern_value
from tests.helpers import make_lora, peft_merged

pytest.importorskip("peft")

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "rslora": dict(r=8, lora_alpha=16, target_modules=LINEAR, use_rslora=True),
    "patterns": dict(
        r=4,
        lora_alpha=4,
        target_modules=LINEAR,
        rank_pattern={"v_proj": 2, r"layers\.1\.mlp\.up_proj": 6},
        alpha_pattern={"o_proj": 3.5, "layers.2.self_attn.q_proj": 1},
    ),
    "modules_to_save": dict(r=2, lora_alpha=4, target_modules=["down_proj"], modules_to_save=["lm_head", "norm"]),
    "embedding": dict(r=4, lora_alpha=2, target_modules=["embed_tokens", "q_proj"]),
}


def _merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    source = open_source(ModelRef(str(base), None, ModelRef(str(adapter))))
    try:
        return source.read_many(list(source.tensors()))
    finally:
        source.close()


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_streamed_adapter_equals_peft_merge_and_unload(family, tmp_path, kind):
    adapter = make_lora(family[0], tmp_path / kind, **ADAPTERS[kind])
    ours, reference = _merged(family[0], adapter), peft_merged(family[0], adapter)
    assert set(ours) == set(reference)
    changed = [
        name for name in ours if not torch.equal(reference[name], load_file(family[0] / "model.safetensors")[name])
    ]
    assert changed, "the adapter must change something"
    for name, tensor in ours.items():
        assert tensor.dtype == reference[name].dtype
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-6, msg=name)


def test_bfloat16_model_merges_in_float32_then_rounds_like_peft(sharded_bf16, tmp_path):
    adapter = make_lora(
        sharded_bf16, tmp_path / "a", r=4, lora_alpha=8, target_modules=LINEAR, modules_to_save=["lm_head"]
    )
    ours, reference = _merged(sharded_bf16, adapter), peft_merged(sharded_bf16, adapter)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, reference[name]), name


def test_fan_in_fan_out_and_lora_bias_on_gpt2_conv1d(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(base)
    adapter = make_lora(
        base,
        tmp_path / "a",
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj"],
        fan_in_fan_out=True,
        lora_bias=True,
    )
    ours, reference = _merged(base, adapter), peft_merged(base, adapter)
    checked = 0
    for name, tensor in reference.items():
        if name in ours:
            torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-6, msg=name)
            checked += "c_attn" in name
    assert checked == 4  # weight and bias of c_attn in both layers


def test_settings_follow_peft_rules():
    settings = parse_adapter_config(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": 8,
                "lora_alpha": 16,
                "use_rslora": True,
                "rank_pattern": {"v_proj": 4, "^model.layers.0.self_attn.q_proj": 2},
                "alpha_pattern": {"layers.1.mlp.down_proj": 1},
            }
        ).encode(),
        "org/lora",
    )
    assert (
        settings.rank("model.layers.3.self_attn.v_proj") == 4 and settings.rank("model.layers.3.self_attn.q_proj") == 8
    )
    assert settings.rank("model.layers.0.self_attn.q_proj") == 2
    assert settings.scaling("model.layers.3.self_attn.v_proj") == pytest.approx(16 / 2)  # alpha / sqrt(4)
    assert settings.scaling("model.layers.1.mlp.down_proj") == pytest.approx(1 / 8**0.5)
    assert LoraSettings(r=4, lora_alpha=8).scaling("x") == 2
    assert pattern_value({"proj": 1}, "model.q_proj", 0) == 0  # a pattern matches whole name components, as in peft
    assert pattern_value({"q_proj": 1, "proj": 2}, "model.q_proj", 0) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"peft_type": "LOHA"}, "'LOHA' adapter; mergehub applies LoRA adapters only"),
        ({"peft_type": "IA3"}, "'IA3' adapter"),
        ({"init_lora_weights": "pissa"}, "rewrites the model's weights"),
        ({"layer_replication": [[0, 2]]}, "layer_replication"),
        ({"r": 0}, "not a positive number"),
        ({"target_modules": ["no_such_module"]}, "none of its target_modules"),
    ],
)
def test_unsupported_adapters_fail_at_dry_run(family, tmp_path, write_recipe, change, message):
    adapter = make_lora(family[0], tmp_path / "a", r=2, lora_alpha=2, target_modules=["q_proj"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **change}))
    recipe = write_recipe(
        {"merge_method": "linear", "models": [{"model": f"{family[0]}+{adapter}", "parameters": {"weight": 1.0}}]}
    )
    with pytest.raises(AdapterError, match=message):
        plan_merge(recipe)


def test_adapter_for_another_model_is_refused_with_every_problem(family, tmp_path, write_recipe):
    other = make_tiny_llama(tmp_path / "wide", hidden=32, layers=6)
    adapter = make_lora(
        other, tmp_path / "a", r=2, lora_alpha=2, target_modules=["q_proj"], modules_to_save=["lm_head"]
    )
    recipe = write_recipe(
        {"merge_method": "linear", "models": [{"model": f"{family[0]}+{adapter}", "parameters": {"weight": 1.0}}]}
    )
    with pytest.raises(AdapterError) as caught:
        plan_merge(recipe)
    text = str(caught.value)
    assert "model.layers.0.self_attn.q_proj: A is [2, 32] and B is [32, 2], but for [64, 64] with rank 2" in text
    assert "model.layers.5.self_attn.q_proj" in text and "lacks" in text  # the base has 4 layers
    assert "lm_head.weight" in text and "[256, 32]" in text
    assert f"adapter_config.json names {other}" in text


def test_pickled_or_missing_adapter_files_are_refused(family, tmp_path, write_recipe):
    adapter = make_lora(family[0], tmp_path / "a", r=2, lora_alpha=2, target_modules=["q_proj"])
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    recipe = write_recipe(
        {"merge_method": "linear", "models": [{"model": f"{family[0]}+{adapter}", "parameters": {"weight": 1.0}}]}
    )
    with pytest.raises(SourceError, match="pickle") as caught:
        plan_merge(recipe)
    assert "adapter_model.safetensors" in caught.value.hint
    empty = tmp_path / "empty"
    empty.mkdir()
    save_file({"x": torch.zeros(1)}, empty / "adapter_model.safetensors")
    recipe = write_recipe(
        {"merge_method": "linear", "models": [{"model": f"{family[0]}+{empty}", "parameters": {"weight": 1.0}}]}
    )
    with pytest.raises(SourceError, match="no adapter_config.json"):
        plan_merge(recipe)


def test_unknown_adapter_keys_are_refused(family, tmp_path, write_recipe):
    adapter = make_lora(family[0], tmp_path / "a", r=2, lora_alpha=2, target_modules=["q_proj"])
    tensors = load_file(adapter / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = torch.ones(64)
    tensors["prompt_embeddings"] = torch.ones(2, 64)
    save_file(tensors, adapter / "adapter_model.safetensors")
    recipe = write_recipe(
        {"merge_method": "linear", "models": [{"model": f"{family[0]}+{adapter}", "parameters": {"weight": 1.0}}]}
    )
    with pytest.raises(AdapterError, match="DoRA magnitude") as caught:
        plan_merge(recipe)
    assert "'prompt_embeddings' is not a LoRA weight" in str(caught.value)


def test_cli_dry_run_names_the_adapter_problem_in_one_message(family, tmp_path, write_recipe, capsys):
    from mergehub.interfaces.cli import main

    adapter = make_lora(family[0], tmp_path / "a", r=2, lora_alpha=2, target_modules=["q_proj"], use_dora=True)
    recipe = write_recipe(
        {"merge_method": "linear", "models": [{"model": f"{family[0]}+{adapter}", "parameters": {"weight": 1.0}}]}
    )
    capsys.readouterr()
    assert main(["merge", "--dry-run", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ")
        and "DoRA (`use_dora`)" in err
        and "hint: Merge it with peft" in err
        and "Traceback" not in err
    )
    good = make_lora(family[0], tmp_path / "b", r=2, lora_alpha=2, target_modules=["q_proj"])
    recipe = write_recipe(
        {"merge_method": "linear", "models": [{"model": f"{family[0]}+{good}", "parameters": {"weight": 1.0}}]}
    )
    assert main(["merge", "--dry-run", str(recipe)]) == 0
    assert f"LoRA adapter {good}, merged in as it streams" in capsys.readouterr().out
