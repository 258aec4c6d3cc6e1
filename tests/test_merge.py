"""End to end: recipes over tiny local models give the formula's tensors and a loadable model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from mergehub import run_merge
from tests.helpers import load_tensors


def _models(family: list[Path], weights: list[float]) -> list[dict]:
    return [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(family, weights)]


def _assert_loads(out: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(out)
    logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()
    generated = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 6)


def test_linear_matches_weighted_average(family, write_recipe, tmp_path):
    recipe = write_recipe({"merge_method": "linear", "models": _models(family, [1.0, 2.0, 1.0])})
    result = run_merge(recipe, tmp_path / "out", out_shard_bytes=100_000)
    inputs = [load_tensors(m) for m in family]
    merged = load_tensors(tmp_path / "out")
    assert set(merged) == set(inputs[0])
    for name, tensor in merged.items():
        expected = (inputs[0][name] + 2 * inputs[1][name] + inputs[2][name]) / 4
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6)
    assert len(result.shards) > 1
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(merged)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in merged.values())
    _assert_loads(tmp_path / "out")


def _reference_slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a64, b64 = a.double().flatten(), b.double().flatten()
    dot = float((a64 / a64.norm()) @ (b64 / b64.norm()))
    if abs(dot) > 0.9995:
        return ((1 - t) * a.double() + t * b.double()).float()
    omega = math.acos(dot)
    return ((math.sin((1 - t) * omega) * a.double() + math.sin(t * omega) * b.double()) / math.sin(omega)).float()


def test_slerp_with_gradient_and_filters(family, write_recipe, tmp_path):
    base, other = family[0], family[1]
    recipe = write_recipe(
        {
            "merge_method": "slerp",
            "base_model": str(base),
            "models": [{"model": str(base)}, {"model": str(other)}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 1.0]}, {"value": 0.3}]},
        }
    )
    run_merge(recipe, tmp_path / "out")
    a, b, merged = load_tensors(base), load_tensors(other), load_tensors(tmp_path / "out")
    for name, tensor in merged.items():
        if "self_attn" in name:
            layer = int(name.split(".")[2])
            t = layer / 3  # four layers: t = index / (n - 1)
        else:
            t = 0.3
        torch.testing.assert_close(tensor, _reference_slerp(t, a[name], b[name]), rtol=0, atol=2e-6)
    # t = 0 at layer 0 and t = 1 at layer 3 reproduce the endpoints exactly
    q = "model.layers.{}.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[q.format(0)], a[q.format(0)], rtol=0, atol=1e-6)
    torch.testing.assert_close(merged[q.format(3)], b[q.format(3)], rtol=0, atol=1e-6)


def test_task_arithmetic_adds_weighted_task_vectors(family, write_recipe, tmp_path):
    base = family[0]
    recipe = write_recipe(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(base),
            "models": _models(family[1:], [0.7, 0.5]),
            "parameters": {"lambda": 0.8},
            "dtype": "float32",
        }
    )
    run_merge(recipe, tmp_path / "out")
    b, x, y = (load_tensors(m) for m in family)
    for name, tensor in load_tensors(tmp_path / "out").items():
        expected = b[name] + 0.8 * (0.7 * (x[name] - b[name]) + 0.5 * (y[name] - b[name]))
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6)
    _assert_loads(tmp_path / "out")


def test_passthrough_stacks_layers_and_updates_config(family, write_recipe, tmp_path):
    a, b = family[0], family[1]
    recipe = write_recipe(
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": str(a), "layer_range": [0, 3]}]},
                {
                    "sources": [
                        {
                            "model": str(b),
                            "layer_range": [1, 4],
                            "parameters": {"scale": [{"filter": "o_proj", "value": 0.5}, {"value": 1.0}]},
                        }
                    ]
                },
            ],
        }
    )
    result = run_merge(recipe, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 6 == result.plan.num_layers
    ta, tb, merged = load_tensors(a), load_tensors(b), load_tensors(tmp_path / "out")
    assert torch.equal(merged["model.layers.2.mlp.up_proj.weight"], ta["model.layers.2.mlp.up_proj.weight"])
    assert torch.equal(merged["model.layers.3.mlp.up_proj.weight"], tb["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(
        merged["model.layers.5.self_attn.o_proj.weight"], tb["model.layers.3.self_attn.o_proj.weight"] * 0.5
    )
    assert torch.equal(merged["model.embed_tokens.weight"], ta["model.embed_tokens.weight"])
    assert torch.equal(merged["model.norm.weight"], tb["model.norm.weight"])
    reference = json.loads((a / "config.json").read_text())  # the first source's config, with the new layer count
    assert {k: v for k, v in config.items() if k != "num_hidden_layers"} == {
        k: v for k, v in reference.items() if k != "num_hidden_layers"
    }
    _assert_loads(tmp_path / "out")


def test_dtype_and_out_dtype(family, sharded_bf16, write_recipe, tmp_path):
    recipe = write_recipe(
        {
            "merge_method": "linear",
            "models": _models([family[0], sharded_bf16], [1, 1]),
            "dtype": "bfloat16",
            "out_dtype": "float16",
        }
    )
    run_merge(recipe, tmp_path / "out")
    a, b = load_tensors(family[0]), load_tensors(sharded_bf16)
    merged = load_tensors(tmp_path / "out")
    name = "model.layers.1.mlp.down_proj.weight"
    assert merged[name].dtype == torch.float16
    # inputs are rounded to `dtype`, averaged in float32, then cast once to `out_dtype`
    expected = ((a[name].bfloat16().float() + b[name].float()) / 2).half()
    torch.testing.assert_close(merged[name], expected, rtol=0, atol=0)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float16"


def test_tied_embeddings_stay_tied(tied_family, write_recipe, tmp_path):
    recipe = write_recipe({"merge_method": "linear", "models": _models(tied_family, [1, 1])})
    run_merge(recipe, tmp_path / "out")
    merged = load_tensors(tmp_path / "out")
    assert "lm_head.weight" not in merged
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_tied_and_untied_models_merge_lm_head_from_embeddings(family, tied_family, write_recipe, tmp_path):
    untied, tied = family[0], tied_family[0]
    recipe = write_recipe({"merge_method": "linear", "models": _models([untied, tied], [1, 1])})
    run_merge(recipe, tmp_path / "out")
    a, b = load_tensors(untied), load_tensors(tied)
    expected = (a["lm_head.weight"] + b["model.embed_tokens.weight"]) / 2
    torch.testing.assert_close(load_tensors(tmp_path / "out")["lm_head.weight"], expected, rtol=0, atol=1e-6)


def test_output_files_and_checksums(family, write_recipe, tmp_path):
    import hashlib

    recipe = write_recipe({"merge_method": "linear", "models": _models(family[:2], [1, 1])})
    result = run_merge(recipe, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "mergekit_config.yml").read_text() == recipe.read_text()
    assert (out / "generation_config.json").exists()
    for shard in result.shards:
        assert hashlib.sha256((out / shard.filename).read_bytes()).hexdigest() == shard.sha256
    assert "sha256" in result.summary()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_same_recipe_gives_identical_shards(family, write_recipe, tmp_path):
    recipe = write_recipe({"merge_method": "linear", "models": _models(family, [1, 1, 1])})
    first = run_merge(recipe, tmp_path / "a")
    second = run_merge(recipe, tmp_path / "b")
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in second.shards]


def test_tokenizer_and_chat_template_files_are_copied(family, write_recipe, tmp_path):
    base = tmp_path / "base_with_tokenizer"
    base.mkdir()
    for f in family[0].iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    (base / "tokenizer_config.json").write_text('{"model_max_length": 128}')
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    recipe = write_recipe(
        {
            "merge_method": "linear",
            "base_model": str(base),
            "models": _models([base, family[1]], [1, 1]),
            "chat_template": template,
        }
    )
    run_merge(recipe, tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer_config.json").read_text() == '{"model_max_length": 128}'
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == template
