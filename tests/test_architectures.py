"""Architecture coverage: tiny random models of each family merged end to end and loaded back with transformers.

Each family (a base and two fine-tunes) is built once per module. Every merged tensor is compared
with an independent formula, the merged model must load and give finite logits, and layer-stacking
passthroughs must rebuild the layer count and every per-layer config list. Multimodal models keep
every tensor: `models:` merges each module (as mergekit does), `slices:` the language model only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from mergehub import UnknownMethodError, run_merge
from mergehub.architecture import is_language_model_tensor, parse_layer_name, per_layer_keys, tensor_group
from mergehub.methods import get_method
from tests.helpers import load_tensors

LAYERS = 3
VOCAB = 128
IDS = torch.tensor([[1, 5, 9, 17, 33, 65]])
_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
_SLIDING = ["sliding_attention", "full_attention", "sliding_attention"]


@dataclass(frozen=True)
class Arch:
    """A tiny causal-LM family and the tensor names that stand for each group."""

    name: str
    model_class: str
    config_class: str
    config: dict
    layer_prefix: str  # layer `i` is `{layer_prefix}{i}.…`
    embedding: str
    layer_tensor: str  # in layer 1
    final_norm: str
    head: str | None  # None: tied to the embedding, no tensor of its own
    post: tuple[str, ...]  # every tensor after the layers
    layers_key: str = "num_hidden_layers"
    per_layer: tuple[str, ...] = ()  # config lists that must hold one entry per layer

    def build(self) -> torch.nn.Module:
        config = getattr(transformers, self.config_class)(**self.config)
        return getattr(transformers, self.model_class)(config)


def _llama_like(
    name: str,
    model: str,
    config: str,
    *,
    layer: str = "mlp.down_proj.weight",
    tied: bool = False,
    per_layer: tuple[str, ...] = (),
    **extra: Any,
) -> Arch:
    return Arch(
        name=name,
        model_class=model,
        config_class=config,
        config={**_TEXT, "tie_word_embeddings": tied, **extra},
        layer_prefix="model.layers.",
        embedding="model.embed_tokens.weight",
        layer_tensor=f"model.layers.1.{layer}",
        final_norm="model.norm.weight",
        head=None if tied else "lm_head.weight",
        post=("model.norm.weight",) if tied else ("model.norm.weight", "lm_head.weight"),
        per_layer=per_layer,
    )


_QWEN_SLIDING = dict(use_sliding_window=True, sliding_window=16, max_window_layers=1, per_layer=("layer_types",))
_GEMMA = dict(tied=True, head_dim=8, sliding_window=16, layer_types=_SLIDING, per_layer=("layer_types",))

ARCHES = [
    _llama_like("llama", "LlamaForCausalLM", "LlamaConfig"),
    _llama_like("mistral", "MistralForCausalLM", "MistralConfig", sliding_window=16),
    _llama_like("qwen2", "Qwen2ForCausalLM", "Qwen2Config", layer="self_attn.q_proj.bias", **_QWEN_SLIDING),
    _llama_like(
        "qwen3", "Qwen3ForCausalLM", "Qwen3Config", layer="self_attn.q_norm.weight", head_dim=8, **_QWEN_SLIDING
    ),
    _llama_like("gemma2", "Gemma2ForCausalLM", "Gemma2Config", layer="pre_feedforward_layernorm.weight", **_GEMMA),
    _llama_like("gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig", layer="self_attn.k_norm.weight", **_GEMMA),
    _llama_like("phi3", "Phi3ForCausalLM", "Phi3Config", layer="self_attn.qkv_proj.weight"),
    # transformers 5 fuses the experts in memory but saves them one by one, as published Mixtral checkpoints are
    _llama_like(
        "mixtral",
        "MixtralForCausalLM",
        "MixtralConfig",
        layer="block_sparse_moe.experts.1.w2.weight",
        num_local_experts=4,
        num_experts_per_tok=2,
    ),
    Arch(
        name="gpt_neox",
        model_class="GPTNeoXForCausalLM",
        config_class="GPTNeoXConfig",
        config={**{k: v for k, v in _TEXT.items() if k != "num_key_value_heads"}, "tie_word_embeddings": False},
        layer_prefix="gpt_neox.layers.",
        embedding="gpt_neox.embed_in.weight",
        layer_tensor="gpt_neox.layers.1.attention.query_key_value.weight",
        final_norm="gpt_neox.final_layer_norm.weight",
        head="embed_out.weight",
        post=("gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias", "embed_out.weight"),
    ),
    Arch(
        name="gpt2",
        model_class="GPT2LMHeadModel",
        config_class="GPT2Config",
        config=dict(
            vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
        ),
        layer_prefix="transformer.h.",
        embedding="transformer.wte.weight",
        layer_tensor="transformer.h.1.mlp.c_fc.weight",
        final_norm="transformer.ln_f.weight",
        head=None,
        post=("transformer.ln_f.weight", "transformer.ln_f.bias"),
        layers_key="n_layer",
    ),
]


def _perturb(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Add seeded noise to every parameter once (tied parameters are listed once)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters()):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


@dataclass
class Family:
    """A saved base (index 0) and two fine-tunes, with their tensors and configs."""

    spec: Any
    paths: list[Path]
    tensors: list[dict[str, torch.Tensor]]
    configs: list[dict]


def _save_family(spec: Any, root: Path) -> Family:
    """Save a model of `spec` as the base (noised everywhere, so norms are not constant) and two fine-tunes of it."""
    torch.manual_seed(0)
    model = spec.build()
    _perturb(model, seed=0, scale=0.02)
    paths = [root / "base", root / "ft1", root / "ft2"]
    model.save_pretrained(paths[0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for seed, path in enumerate(paths[1:], start=1):
        model.load_state_dict(state)
        _perturb(model, seed=seed, scale=0.02)
        model.save_pretrained(path)
    configs = [json.loads((p / "config.json").read_text()) for p in paths]
    return Family(spec, paths, [load_tensors(p) for p in paths], configs)


@pytest.fixture(scope="module", params=ARCHES, ids=lambda a: a.name)
def family(request, tmp_path_factory: pytest.TempPathFactory) -> Family:
    """A base and two fine-tunes of one architecture, saved once per module."""
    return _save_family(request.param, tmp_path_factory.mktemp(request.param.name))


# Independent formulas


def _slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a64, b64 = a.double(), b.double()
    dot = float((a64.flatten() / a64.norm()) @ (b64.flatten() / b64.norm()))
    if abs(dot) > 0.9995:
        return ((1 - t) * a64 + t * b64).float()
    omega = math.acos(dot)
    return ((math.sin((1 - t) * omega) * a64 + math.sin(t * omega) * b64) / math.sin(omega)).float()


def _ties(base: torch.Tensor, others: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES as in the paper and mergekit: keep the top-`density` |delta|, elect signs by the weighted sum,
    average the weighted entries that agree."""
    deltas = []
    for other in others:
        delta = (other - base).double().flatten()
        keep = torch.zeros_like(delta, dtype=torch.bool)
        keep[delta.abs().topk(max(1, int(density * delta.numel()))).indices] = True
        deltas.append(torch.where(keep, delta, 0.0))
    weighted = torch.stack([w * d for w, d in zip(weights, deltas)])
    sign = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
    agree = weighted.sign() == sign
    divisor = (torch.tensor(weights, dtype=torch.float64)[:, None] * agree).sum(0)
    divisor[divisor.abs() < 1e-8] = 1.0
    merged = (weighted * agree).sum(0) / divisor
    return (base.double().flatten() + merged).view(base.shape).float()


@dataclass(frozen=True)
class MethodCase:
    name: str
    recipe: Callable[[list[str]], dict]
    expected: Callable[[list[torch.Tensor]], torch.Tensor]
    atol: float


def _task_recipe(method: str, p: list[str], **parameters: Any) -> dict:
    return {
        "merge_method": method,
        "base_model": p[0],
        "models": [{"model": p[1], "parameters": {"weight": 0.7}}, {"model": p[2], "parameters": {"weight": 0.5}}],
        "parameters": parameters,
    }


METHODS = [
    MethodCase(
        "linear",
        lambda p: {
            "merge_method": "linear",
            "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(p, [1, 2, 1])],
        },
        lambda x: (x[0] + 2 * x[1] + x[2]) / 4,
        1e-6,
    ),
    MethodCase(
        "slerp",
        lambda p: {
            "merge_method": "slerp",
            "base_model": p[0],
            "models": [{"model": p[0]}, {"model": p[1]}],
            "parameters": {"t": 0.3},
        },
        lambda x: _slerp(0.3, x[0], x[1]),
        2e-6,
    ),
    MethodCase(
        "task_arithmetic",
        lambda p: _task_recipe("task_arithmetic", p, **{"lambda": 0.8}),
        lambda x: x[0] + 0.8 * (0.7 * (x[1] - x[0]) + 0.5 * (x[2] - x[0])),
        1e-6,
    ),
    MethodCase(
        "ties",
        lambda p: _task_recipe("ties", p, density=0.5),
        lambda x: _ties(x[0], [x[1], x[2]], [0.7, 0.5], 0.5),
        1e-6,
    ),
]


def _registered(method: str) -> bool:
    try:
        get_method(method)
    except UnknownMethodError:
        return False
    return True


def _load_and_run(out: Path, arch: Arch) -> torch.nn.Module:
    """Load the merged model with transformers and check its logits are finite (and tied heads stay tied)."""
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == arch.model_class
    with torch.no_grad():
        logits = model(IDS).logits
    assert logits.shape == (1, IDS.shape[1], VOCAB)
    assert torch.isfinite(logits).all()
    if arch.head is None:
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return model


def _stack(first: tuple[Path, list[int]], second: tuple[Path, list[int]]) -> dict:
    """A passthrough recipe stacking two layer ranges."""
    return {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": str(model), "layer_range": layers}]} for model, layers in (first, second)],
    }


@pytest.mark.parametrize("case", METHODS, ids=lambda c: c.name)
def test_merge_matches_formula_and_loads(family: Family, case: MethodCase, write_recipe, tmp_path):
    if not _registered(case.name):
        pytest.skip(f"{case.name} is not registered")
    arch: Arch = family.spec
    out = tmp_path / "out"
    run_merge(write_recipe(case.recipe([str(p) for p in family.paths])), out)
    merged = load_tensors(out)
    inputs = family.tensors
    assert set(merged) == set(inputs[0])
    for name in (arch.embedding, arch.layer_tensor, arch.final_norm, arch.head):
        assert name is None or name in merged, name
    if arch.head is None:
        assert "lm_head.weight" not in merged
    for name, tensor in merged.items():
        expected = case.expected([x[name] for x in inputs])
        torch.testing.assert_close(tensor, expected, rtol=0, atol=case.atol, msg=lambda m, name=name: f"{name}: {m}")
    _load_and_run(out, arch)


def test_passthrough_stacks_layers_and_rebuilds_config(family: Family, write_recipe, tmp_path):
    arch: Arch = family.spec
    (a, b), (ta, tb), (ca, cb) = family.paths[:2], family.tensors[:2], family.configs[:2]
    out = tmp_path / "out"
    run_merge(write_recipe(_stack((a, [0, 2]), (b, [1, 3]))), out)
    merged = load_tensors(out)

    origin = [(ta, 0), (ta, 1), (tb, 1), (tb, 2)]  # output layers 0, 1 are A's 0, 1; 2, 3 are B's 1, 2
    expected = {}
    for name in ta:
        if name.startswith(f"{arch.layer_prefix}0."):
            suffix = name[len(f"{arch.layer_prefix}0.") :]
            for k, (source, layer) in enumerate(origin):
                expected[f"{arch.layer_prefix}{k}.{suffix}"] = source[f"{arch.layer_prefix}{layer}.{suffix}"]
        elif not name.startswith(arch.layer_prefix):
            expected[name] = tb[name] if name in arch.post else ta[name]  # head and final norm from the last slice
    assert set(merged) == set(expected)
    for name, tensor in merged.items():
        assert torch.equal(tensor, expected[name]), name

    config = json.loads((out / "config.json").read_text())
    assert config[arch.layers_key] == 4
    per_layer = [k for k, v in ca.items() if isinstance(v, list) and len(v) == LAYERS]
    assert set(arch.per_layer) <= set(per_layer), f"{arch.name}'s config lacks per-layer lists {arch.per_layer}"
    for key in per_layer:
        assert config[key] == ca[key][0:2] + cb[key][1:3], key
    model = _load_and_run(out, arch)
    for key in arch.per_layer:
        assert list(getattr(model.config, key)) == config[key]


def test_passthrough_reordering_layers_rebuilds_per_layer_lists(family: Family, write_recipe, tmp_path):
    arch: Arch = family.spec
    if not arch.per_layer:
        pytest.skip(f"{arch.name} has no per-layer config lists")
    (a, b), (ca, cb) = family.paths[:2], family.configs[:2]
    out = tmp_path / "out"
    run_merge(write_recipe(_stack((a, [1, 3]), (b, [0, 1]))), out)
    config = json.loads((out / "config.json").read_text())
    assert config[arch.layers_key] == LAYERS
    for key in arch.per_layer:
        assert config[key] == ca[key][1:3] + cb[key][0:1], key


def test_passthrough_leaves_lists_that_are_not_per_layer(write_recipe, tmp_path):
    ARCHES[0].build().save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [2, 3, 4]  # as many end tokens as layers (Llama 3 lists three)
    config_path.write_text(json.dumps(config))
    run_merge(write_recipe(_stack((tmp_path / "m", [0, 2]), (tmp_path / "m", [1, 3]))), tmp_path / "out")
    merged = json.loads((tmp_path / "out" / "config.json").read_text())
    assert merged["num_hidden_layers"] == 4
    assert merged["eos_token_id"] == [2, 3, 4]
    assert merged["architectures"] == ["LlamaForCausalLM"]


# Multimodal models: a language model with a vision tower and a projector


@dataclass(frozen=True)
class Multimodal:
    """A tiny image-text model whose language-model tensors all start with `text_prefix`."""

    name: str
    build: Callable[[], torch.nn.Module]
    text_prefix: str
    text_layer_prefix: str
    vision_layer_prefix: str
    image_tokens: int
    per_layer: tuple[str, ...] = ()


_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=28, patch_size=14
)
IMAGE_TOKEN = VOCAB - 1


def _llava() -> torch.nn.Module:
    config = transformers.LlavaConfig(
        text_config=transformers.LlamaConfig(**_TEXT),
        vision_config=transformers.CLIPVisionConfig(**_VISION, projection_dim=32),
        image_token_index=IMAGE_TOKEN,
        image_seq_length=4,
    )
    return transformers.LlavaForConditionalGeneration(config)


def _gemma3() -> torch.nn.Module:
    config = transformers.Gemma3Config(
        text_config={**_TEXT, "head_dim": 8, "sliding_window": 16, "layer_types": _SLIDING},
        vision_config={**_VISION, "vision_use_head": False},
        mm_tokens_per_image=4,
        image_token_index=IMAGE_TOKEN,
        boi_token_index=VOCAB - 3,
        eoi_token_index=VOCAB - 2,
    )
    return transformers.Gemma3ForConditionalGeneration(config)


MULTIMODAL = [
    Multimodal("llava", _llava, "language_model.", "language_model.model.layers.", "vision_tower.encoder.layers.", 4),
    Multimodal(
        "gemma3",
        _gemma3,
        "language_model.",
        "language_model.model.layers.",
        "vision_tower.encoder.layers.",
        4,
        per_layer=("layer_types",),
    ),
]


@pytest.fixture(scope="module", params=MULTIMODAL, ids=lambda m: m.name)
def multimodal(request, tmp_path_factory: pytest.TempPathFactory) -> Family:
    """A base and two fine-tunes (vision tower included) of a tiny image-text model: 3 text and 4 vision layers."""
    return _save_family(request.param, tmp_path_factory.mktemp(request.param.name))


def _load_image_text(out: Path, spec: Multimodal) -> torch.nn.Module:
    """Load the merged model and run a prompt with an image through it; logits must be finite."""
    model = transformers.AutoModelForImageTextToText.from_pretrained(out)
    ids = torch.tensor([[1] + [IMAGE_TOKEN] * spec.image_tokens + [5, 9]])
    pixels = torch.randn((1, 3, 28, 28), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits
    assert logits.shape == (1, ids.shape[1], VOCAB)
    assert torch.isfinite(logits).all()
    return model


def _linear_recipe(paths: list[Path]) -> dict:
    models = [{"model": str(p), "parameters": {"weight": 1.0}} for p in paths[:2]]
    return {"merge_method": "linear", "base_model": str(paths[0]), "models": models}


def test_multimodal_models_recipe_merges_every_module(multimodal: Family, write_recipe, tmp_path):
    """As mergekit does with `models:`: every module (vision tower and projector too) is merged, every name kept."""
    spec: Multimodal = multimodal.spec
    a, b = multimodal.tensors[:2]
    out = tmp_path / "out"
    result = run_merge(write_recipe(_linear_recipe(multimodal.paths)), out)
    merged = load_tensors(out)
    assert set(merged) == set(a) and not result.plan.warnings
    assert f"{spec.vision_layer_prefix}3.mlp.fc1.weight" in merged  # beyond the 3 text layers
    assert any(not name.startswith(spec.text_prefix) for name in merged)
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, (a[name] + b[name]) / 2, rtol=0, atol=1e-6)
    _load_image_text(out, spec)


def test_multimodal_slices_merge_the_language_model_and_copy_the_rest_with_a_warning(
    multimodal: Family, write_recipe, tmp_path
):
    """mergekit refuses `slices:` on a model with several modules; mergehub slices the language model and says so."""
    spec: Multimodal = multimodal.spec
    a = multimodal.tensors[0]
    slices = [{"sources": [{"model": str(p), "layer_range": [0, LAYERS]} for p in multimodal.paths[:2]]}]
    recipe = {"merge_method": "linear", "slices": slices, "parameters": {"weight": 1.0}}
    result = run_merge(write_recipe(recipe), tmp_path / "out")
    merged = load_tensors(tmp_path / "out")
    (warning,) = result.plan.warnings
    assert warning.location == "slices" and "copied unmerged" in warning.message and "modules:" in warning.message
    others = [name for name in a if not name.startswith(spec.text_prefix)]
    assert others
    for name in others:
        assert torch.equal(merged[name], a[name]), name


def test_multimodal_passthrough_stacks_only_language_layers(multimodal: Family, write_recipe, tmp_path):
    spec: Multimodal = multimodal.spec
    (a, b), (ta, tb), (ca, cb) = multimodal.paths[:2], multimodal.tensors[:2], multimodal.configs[:2]
    out = tmp_path / "out"
    run_merge(write_recipe(_stack((a, [0, 2]), (b, [1, 3]))), out)
    merged = load_tensors(out)

    prefix = spec.text_layer_prefix
    origin = [(ta, 0), (ta, 1), (tb, 1), (tb, 2)]
    for name in [n for n in ta if n.startswith(f"{prefix}0.")]:
        suffix = name[len(f"{prefix}0.") :]
        for k, (source, layer) in enumerate(origin):
            assert torch.equal(merged[f"{prefix}{k}.{suffix}"], source[f"{prefix}{layer}.{suffix}"])
    assert not [n for n in merged if n.startswith(f"{prefix}4.")]
    towers = {n for n in ta if not n.startswith(spec.text_prefix)}
    assert {n for n in merged if not n.startswith(spec.text_prefix)} == towers
    for name in towers:  # vision tower and projector: the first model's, unchanged
        assert torch.equal(merged[name], ta[name]), name

    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 4
    assert config["vision_config"]["num_hidden_layers"] == ca["vision_config"]["num_hidden_layers"] == 4
    for key in spec.per_layer:
        assert config["text_config"][key] == ca["text_config"][key][0:2] + cb["text_config"][key][1:3]
    _load_image_text(out, spec)


# Names: groups, language-model membership, per-layer config keys


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("model.embed_tokens.weight", "pre"),
        ("transformer.wte.weight", "pre"),
        ("transformer.wpe.weight", "pre"),
        ("gpt_neox.embed_in.weight", "pre"),
        ("transformer.word_embeddings.weight", "pre"),
        ("transformer.word_embeddings_layernorm.weight", "pre"),
        ("model.decoder.embed_positions.weight", "pre"),
        ("model.decoder.project_in.weight", "pre"),
        ("model.tok_embeddings.weight", "pre"),
        ("model.layers.0.mlp.down_proj.weight", "layer"),
        ("transformer.h.11.attn.c_attn.weight", "layer"),
        ("model.norm.weight", "post"),
        ("transformer.ln_f.bias", "post"),
        ("gpt_neox.final_layer_norm.weight", "post"),
        ("model.decoder.project_out.weight", "post"),
        ("lm_head.weight", "post"),
        ("embed_out.weight", "post"),
        ("output.weight", "post"),
        ("transformer.output_layer.weight", "post"),
        ("language_model.lm_head.weight", "post"),
    ],
)
def test_tensor_group(name: str, group: str):
    assert tensor_group(name) == group


def test_layer_index_is_the_outermost_one():
    parsed = parse_layer_name("model.layers.3.mlp.experts.layers.1.weight")
    assert parsed is not None
    assert (parsed.prefix, parsed.index, parsed.suffix) == ("model.layers", 3, "mlp.experts.layers.1.weight")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("language_model.model.layers.0.mlp.up_proj.weight", True),
        ("model.language_model.embed_tokens.weight", True),
        ("lm_head.weight", True),
        ("vision_tower.encoder.layers.0.mlp.fc1.weight", False),
        ("model.vision_tower.vision_model.embeddings.patch_embedding.weight", False),
        ("visual.blocks.0.attn.qkv.weight", False),
        ("model.vision_model.encoder.layers.0.self_attn.q_proj.weight", False),
        ("multi_modal_projector.linear_1.weight", False),
        ("model.mm_projector.0.weight", False),
        ("image_newline", False),
        ("model.embed_vision.embedding_projection.weight", False),
        ("audio_tower.layers.0.fc1.weight", False),
    ],
)
def test_language_model_tensors(name: str, text: bool):
    assert is_language_model_tensor(name) is text
    if not text:
        assert parse_layer_name(name) is None  # a tower's layers are not the language model's


def test_per_layer_keys():
    config = {
        "num_hidden_layers": 3,
        "layer_types": ["a", "b", "a"],
        "eos_token_id": [1, 2, 3],
        "architectures": ["X"] * 3,
    }
    assert per_layer_keys(config) == ["layer_types"]
    multimodal = {"architectures": ["X"], "text_config": {"num_hidden_layers": 2, "layer_types": ["a", "b"]}}
    assert per_layer_keys(multimodal) == ["layer_types"]
    assert per_layer_keys({"layer_types": ["a"]}) == []
