"""MoE assembly against mergekit-moe 0.1.5, run in the same process on the same tiny models.

mergekit-moe writes transformers 5's fused expert layout (`mlp.experts.gate_up_proj`); mergehub writes the
checkpoint layout of the Hub (`block_sparse_moe.experts.N.w1.weight`). Both are compared tensor by tensor
after mapping one onto the other, and loaded into transformers, where they must be the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mergehub import api
from tests.helpers import load_tensors


def mergekit_moe(config: dict, out: Path, seed: int | None = None) -> Path:
    """mergekit-moe's `build` on the config, with `--random-seed seed`."""
    from mergekit.moe.config import MoEMergeConfig
    from mergekit.options import MergeOptions
    from mergekit.scripts.moe import build

    options = MergeOptions(random_seed=seed, device="cpu")
    options.apply_global_options()
    build(MoEMergeConfig.model_validate(config), str(out), options, device="cpu")
    return out


def unfused(tensors: dict[str, torch.Tensor], block: str, names: tuple[str, str, str]) -> dict[str, torch.Tensor]:
    """mergekit's fused experts (`experts.gate_up_proj`, `experts.down_proj`) as a tensor per expert and projection."""
    gate_name, up_name, down_name = names
    out = {}
    for name, tensor in tensors.items():
        prefix = name.rsplit(".mlp.experts.", 1)[0] if ".mlp.experts." in name else None
        if prefix and name.endswith("gate_up_proj"):
            for e, fused in enumerate(tensor):
                gate, up = fused.chunk(2, dim=0)
                out[f"{prefix}.{block}.experts.{e}.{gate_name}.weight"] = gate
                out[f"{prefix}.{block}.experts.{e}.{up_name}.weight"] = up
        elif prefix and name.endswith("down_proj"):
            for e, down in enumerate(tensor):
                out[f"{prefix}.{block}.experts.{e}.{down_name}.weight"] = down
        elif name.endswith("mlp.gate.weight"):
            out[name.replace(".mlp.", f".{block}.")] = tensor
        else:
            out[name] = tensor
    return out


def assemble(config: dict, tmp_path: Path, seed: int = 0, **options) -> tuple[Path, Path]:
    path = tmp_path / "moe.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    ours = api.run_merge(path, tmp_path / "ours", seed=seed, prompt_cache=False, **options).out_dir
    theirs = mergekit_moe(config, tmp_path / "theirs", seed=seed)
    return ours, theirs


PROMPTS = [["w1 w2 w3", "w4 w5"], ["w7 w8 w9 w10 w11"], ["w20", "w21 w22 w23"], ["w30 w31", "w32"]]


def llama_config(experts: list[Path], mode: str, per_token: int, count: int = 4, **extra) -> dict:
    return {
        "base_model": str(experts[0]),
        "gate_mode": mode,
        "dtype": "float32",
        "experts_per_token": per_token,
        "experts": [
            {
                "source_model": str(experts[1 + i]),
                "positive_prompts": PROMPTS[i],
                **({"negative_prompts": ["w40"]} if i == 0 else {}),
            }
            for i in range(count)
        ],
        **extra,
    }


def assert_same_model(
    ours: Path, theirs: Path, ours_tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    assert sorted(ours_tensors) == sorted(expected)
    for name, tensor in expected.items():
        assert ours_tensors[name].dtype == tensor.dtype, name
        torch.testing.assert_close(ours_tensors[name], tensor, rtol=0, atol=1e-5, msg=name)
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(ours, dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(theirs, dtype=torch.float32).state_dict()
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize(("mode", "per_token"), [("hidden", 2), ("hidden", 3), ("cheap_embed", 2), ("hidden_avg", 3)])
def test_mixtral_equals_mergekit_moe(experts, tmp_path, mode, per_token):
    ours, theirs = assemble(llama_config(experts, mode, per_token), tmp_path)
    expected = unfused(load_tensors(theirs), "block_sparse_moe", ("w1", "w3", "w2"))
    assert_same_model(ours, theirs, load_tensors(ours), expected)
    config, reference = json.loads((ours / "config.json").read_text()), json.loads((theirs / "config.json").read_text())
    for key in (
        "model_type",
        "architectures",
        "num_local_experts",
        "num_experts_per_tok",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "sliding_window",
        "vocab_size",
        "dtype",
    ):
        assert config.get(key) == reference.get(key), key
    assert config["num_local_experts"] == 4 and config["num_experts_per_tok"] == per_token


@pytest.mark.parametrize("mode", ["random", "uniform_random"])
def test_random_gates_equal_mergekit_moe_with_the_same_seed(experts, tmp_path, mode):
    ours, theirs = assemble(llama_config(experts, mode, 2), tmp_path, seed=11)
    assert_same_model(
        ours, theirs, load_tensors(ours), unfused(load_tensors(theirs), "block_sparse_moe", ("w1", "w3", "w2"))
    )


def test_noise_and_residual_scale_by_structure_and_distribution(experts, tmp_path):
    config = llama_config(experts, "cheap_embed", 2)
    config["experts"][1].update(noise_scale=0.05, residual_scale=0.5)
    ours, theirs = assemble(config, tmp_path, seed=3)
    mine, reference = load_tensors(ours), unfused(load_tensors(theirs), "block_sparse_moe", ("w1", "w3", "w2"))
    assert sorted(mine) == sorted(reference)
    source = load_tensors(experts[2])
    for layer in range(4):
        for projection, name in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            out = f"model.layers.{layer}.block_sparse_moe.experts.1.{name}.weight"
            clean = source[f"model.layers.{layer}.mlp.{projection}.weight"]
            for tensors in (mine, reference):
                scale = 0.5 if projection == "down_proj" else 1.0
                noise = tensors[out] / scale - clean
                assert abs(noise.std().item() - 0.05) < 0.005 and abs(noise.mean().item()) < 0.005
            assert not torch.equal(mine[out], reference[out])  # independent draws: mergekit's from the global RNG
        untouched = f"model.layers.{layer}.block_sparse_moe.experts.0.w1.weight"
        assert torch.equal(mine[untouched], reference[untouched])
    again = api.run_merge(tmp_path / "moe.yml", tmp_path / "again", seed=3, prompt_cache=False).out_dir
    repeated = load_tensors(again)
    assert all(torch.equal(repeated[k], v) for k, v in mine.items())  # the same seed draws the same noise


def test_qwen2_moe_with_a_shared_expert_equals_mergekit_moe(qwen2_experts, tmp_path):
    config = {
        "base_model": str(qwen2_experts[0]),
        "gate_mode": "hidden",
        "dtype": "float32",
        "experts_per_token": 2,
        "experts": [{"source_model": str(qwen2_experts[i + 1]), "positive_prompts": PROMPTS[i]} for i in range(3)],
        # mergekit-moe opens only the base's and the experts' files: its shared expert must be one of those models
        "shared_experts": [
            {"source_model": str(qwen2_experts[0]), "positive_prompts": ["w1 w7 w20"], "residual_scale": 0.3}
        ],
    }
    ours, theirs = assemble(config, tmp_path)
    mine, reference = load_tensors(ours), load_tensors(theirs)
    assert "model.layers.0.mlp.shared_expert_gate.weight" in mine and mine[
        "model.layers.0.mlp.shared_expert_gate.weight"
    ].shape == (1, 64)
    assert_same_model(ours, theirs, mine, reference)
    assert json.loads((ours / "config.json").read_text())["model_type"] == "qwen2_moe"


def test_qwen2_moe_from_llama_experts_gets_zero_attention_biases(experts, tmp_path):
    config = llama_config(
        experts,
        "cheap_embed",
        2,
        count=2,
        shared_experts=[{"source_model": str(experts[2]), "positive_prompts": ["w5 w6"]}],
    )
    ours, theirs = assemble(config, tmp_path)
    mine = load_tensors(ours)
    assert torch.count_nonzero(mine["model.layers.0.self_attn.q_proj.bias"]) == 0
    assert_same_model(ours, theirs, mine, load_tensors(theirs))


def test_qwen3_moe_equals_mergekit_moe(qwen3_experts, tmp_path):
    config = {
        "base_model": str(qwen3_experts[0]),
        "gate_mode": "hidden",
        "dtype": "float32",
        "experts_per_token": 3,
        "experts": [{"source_model": str(qwen3_experts[i + 1]), "positive_prompts": PROMPTS[i]} for i in range(3)],
    }
    ours, theirs = assemble(config, tmp_path)
    expected = unfused(load_tensors(theirs), "mlp", ("gate_proj", "up_proj", "down_proj"))
    assert_same_model(ours, theirs, load_tensors(ours), expected)
    assert "model.layers.2.self_attn.q_norm.weight" in load_tensors(ours)


def test_logits_equal_transformers_own_mixtral_built_from_the_same_tensors(experts, tmp_path):
    """The assembled model generates as a MixtralForCausalLM with weights set by hand from base, experts and gates."""
    from transformers import AutoModelForCausalLM, MixtralConfig, MixtralForCausalLM

    from mergehub.moe.gates import GateSpec, PromptSet, compute_gates
    from mergehub.sources.local import LocalSource

    config = llama_config(experts, "hidden", 2)
    path = tmp_path / "moe.yml"
    path.write_text(yaml.safe_dump(config))
    out = api.run_merge(path, tmp_path / "ours", prompt_cache=False).out_dir
    base = load_tensors(experts[0])
    expert_tensors = [load_tensors(e) for e in experts[1:5]]
    prompts = tuple(
        PromptSet(tuple(e["positive_prompts"]), tuple(e.get("negative_prompts", ()))) for e in config["experts"]
    )
    gates = compute_gates(
        GateSpec("hidden", prompts, 4, 4, 64, 256), LocalSource(experts[0]), device=torch.device("cpu")
    )

    reference_config = MixtralConfig(
        **{
            k: v
            for k, v in json.loads((experts[0] / "config.json").read_text()).items()
            if k not in ("architectures", "model_type")
        },
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=None,
    )
    reference = MixtralForCausalLM(reference_config).eval()
    with torch.no_grad():
        reference.model.embed_tokens.weight.copy_(base["model.embed_tokens.weight"])
        reference.model.norm.weight.copy_(base["model.norm.weight"])
        reference.lm_head.weight.copy_(base["lm_head.weight"])
        for i, layer in enumerate(reference.model.layers):
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(layer.self_attn, name).weight.copy_(base[f"model.layers.{i}.self_attn.{name}.weight"])
            layer.input_layernorm.weight.copy_(base[f"model.layers.{i}.input_layernorm.weight"])
            layer.post_attention_layernorm.weight.copy_(base[f"model.layers.{i}.post_attention_layernorm.weight"])
            layer.mlp.gate.weight.copy_(gates[i].float())
            mlp = [
                {p: t[f"model.layers.{i}.mlp.{p}.weight"] for p in ("gate_proj", "up_proj", "down_proj")}
                for t in expert_tensors
            ]
            layer.mlp.experts.gate_up_proj.copy_(torch.stack([torch.cat([m["gate_proj"], m["up_proj"]]) for m in mlp]))
            layer.mlp.experts.down_proj.copy_(torch.stack([m["down_proj"] for m in mlp]))
    assembled = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 10, 11, 12, 13, 14, 20, 21, 30, 31, 40, 7]])
    with torch.no_grad():
        expected, actual = reference(ids).logits, assembled(ids).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    generated = assembled.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, reference.generate(ids, max_new_tokens=6, do_sample=False))
