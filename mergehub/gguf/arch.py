"""Which models mergehub writes as GGUF, and how each Hugging Face tensor becomes a llama.cpp tensor.

This follows llama.cpp's `convert_hf_to_gguf.py` for the families below: tensor names come from gguf-py's
`TensorNameMap`; Llama-family Q/K weights are permuted to llama.cpp's rotary layout; Gemma norms are stored
as `1 + w`; Gemma 3 embeddings lose the rows beyond the tokenizer; Phi-3 keeps its fused QKV and gate-up
tensors; Llama 3 rope scaling and Phi-3 long-rope factors become tensors of their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gguf
import torch

from mergehub.architecture import is_language_model_tensor
from mergehub.errors import GGUFError

__all__ = [
    "Family",
    "FAMILIES",
    "TensorTarget",
    "ModelMap",
    "hparams_of",
    "rope_parameters",
    "map_model",
    "prepare_tensor",
]


@dataclass(frozen=True)
class Family:
    """How llama.cpp converts one Hugging Face architecture."""

    name: str
    arch: gguf.MODEL_ARCH
    permute_qk: bool = False
    norm_shift: bool = False
    drop: tuple[str, ...] = ()
    trim_vocab: bool = False


FAMILIES: dict[str, Family] = {
    "LlamaForCausalLM": Family("llama", gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "MistralForCausalLM": Family("llama", gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "Qwen2ForCausalLM": Family("qwen2", gguf.MODEL_ARCH.QWEN2),
    "Qwen3ForCausalLM": Family("qwen3", gguf.MODEL_ARCH.QWEN3),
    "Gemma2ForCausalLM": Family("gemma2", gguf.MODEL_ARCH.GEMMA2, norm_shift=True, drop=("lm_head.weight",)),
    "Gemma3ForCausalLM": Family("gemma3", gguf.MODEL_ARCH.GEMMA3, norm_shift=True, trim_vocab=True),
    "Phi3ForCausalLM": Family("phi3", gguf.MODEL_ARCH.PHI3),
}
"""Hugging Face architectures mergehub exports, by their `architectures` name in config.json."""

# Tensors llama.cpp never converts: buffers some checkpoints carry.
_UNUSED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")


@dataclass(frozen=True)
class TensorTarget:
    """One tensor of the GGUF file: its name and shape (numpy order), and how it is made.

    `source` is the Hugging Face tensor it comes from, or None for a tensor computed from the config (`values`).
    """

    name: str
    kind: gguf.MODEL_TENSOR
    shape: tuple[int, ...]
    source: str | None = None
    permute_heads: int | None = None
    shift: float = 0.0
    rows: int | None = None
    values: tuple[float, ...] = ()


@dataclass(frozen=True)
class ModelMap:
    """A model's GGUF architecture and every tensor of its GGUF file, in write order."""

    family: Family
    hparams: dict[str, Any]
    targets: tuple[TensorTarget, ...]
    skipped: tuple[str, ...]

    @property
    def by_source(self) -> dict[str, TensorTarget]:
        """The targets made from a Hugging Face tensor, by that tensor's name."""
        return {t.source: t for t in self.targets if t.source is not None}

    @property
    def parameters(self) -> int:
        """Number of weights written, as llama.cpp counts them for the size label."""
        return sum(math.prod(t.shape) for t in self.targets if t.source is not None)


def hparams_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with `text_config` lifted to the top, as the converter reads it."""
    return {**config, **config["text_config"]} if isinstance(config.get("text_config"), dict) else dict(config)


def _find(hparams: Mapping[str, Any], *keys: str) -> Any:
    return next((hparams[k] for k in keys if k in hparams), None)


def rope_parameters(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """`rope_parameters` (transformers 5) or `rope_scaling`, completed from the top-level keys as the converter does."""
    rope = dict(hparams.get("rope_parameters") or hparams.get("rope_scaling") or {})
    if "full_attention" in rope or "sliding_attention" in rope:
        return rope
    theta = _find(
        hparams, "global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"
    )
    local = _find(
        hparams, "local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta", "rope_local_base_freq"
    )
    partial = _find(hparams, "partial_rotary_factor", "rope_pct", "rope_percent")
    original = _find(hparams, "original_max_position_embeddings")
    if local is not None:
        rope["sliding_attention"] = {"rope_theta": local}
    if "rope_theta" not in rope and theta is not None:
        rope["rope_theta"] = theta
    if "rope_type" not in rope and rope.get("type") is not None:
        rope["rope_type"] = rope["type"]
    if "partial_rotary_factor" not in rope and partial is not None:
        rope["partial_rotary_factor"] = partial
    if "original_max_position_embeddings" not in rope and original is not None:
        rope["original_max_position_embeddings"] = original
    return rope


def block_count(hparams: Mapping[str, Any]) -> int:
    """Number of transformer blocks."""
    count = _find(hparams, "n_layers", "num_hidden_layers", "n_layer", "num_layers")
    if not isinstance(count, int):
        raise GGUFError(
            "The model's config.json names no layer count.", hint="A GGUF export needs `num_hidden_layers`."
        )
    return count


def family_of(config: Mapping[str, Any]) -> Family:
    """The export family of a config's architecture.

    Raises:
        GGUFError: the architecture is not one mergehub exports.
    """
    names = config.get("architectures") or []
    for name in names:
        if name in FAMILIES:
            return FAMILIES[name]
    supported = ", ".join(FAMILIES)
    found = ", ".join(names) or f"model_type {config.get('model_type')!r}"
    raise GGUFError(
        f"mergehub does not write GGUF for {found}.",
        hint=f"Supported: {supported}. For another architecture, write safetensors and use llama.cpp's "
        "convert_hf_to_gguf.py.",
    )


def _vocab_rows(tokenizer_size: int | None, family: Family, shape: tuple[int, ...]) -> int | None:
    if not family.trim_vocab or tokenizer_size is None or tokenizer_size >= shape[0]:
        return None
    return tokenizer_size


def _extra_targets(family: Family, hparams: Mapping[str, Any], rope: Mapping[str, Any]) -> list[TensorTarget]:
    """Tensors computed from the config: Llama 3 rope frequency factors, Phi-3 long-rope factors."""
    names = gguf.TENSOR_NAMES
    params = rope.get("full_attention", rope)
    if family.name == "llama" and str(params.get("rope_type", "")).lower() == "llama3":
        dim = hparams.get("head_dim") or hparams["hidden_size"] // hparams["num_attention_heads"]
        values = _llama3_rope_factors(params, dim)
        return [
            TensorTarget(
                names[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                gguf.MODEL_TENSOR.ROPE_FREQS,
                (len(values),),
                values=values,
            )
        ]
    if family.name == "phi3" and rope.get("long_factor"):
        long, short = rope.get("long_factor"), rope.get("short_factor")
        if not short or len(long) != len(short):
            raise GGUFError("The Phi-3 config's rope long_factor and short_factor differ in length.")
        return [
            TensorTarget(names[kind] + ".weight", kind, (len(v),), values=tuple(float(x) for x in v))
            for kind, v in ((gguf.MODEL_TENSOR.ROPE_FACTORS_LONG, long), (gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT, short))
        ]
    return []


def _llama3_rope_factors(params: Mapping[str, Any], dim: int) -> tuple[float, ...]:
    """Per-frequency scaling of Llama 3.1+ rope, in float32 as the converter computes it."""
    base = params.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_context = params.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return tuple(float(f) for f in torch.tensor(factors, dtype=torch.float32))


def map_model(
    config: Mapping[str, Any], tensors: Sequence[tuple[str, tuple[int, ...]]], *, tokenizer_size: int | None = None
) -> ModelMap:
    """Map a model's tensors `(name, shape)` to its GGUF tensors, checking every name before any weight is read.

    Args:
        tokenizer_size: tokens the tokenizer defines (Gemma 3 embeddings are cut to it, as llama.cpp does).

    Raises:
        GGUFError: the architecture is not supported, or a tensor has no llama.cpp name.
    """
    family = family_of(config)
    hparams = hparams_of(config)
    rope = rope_parameters(hparams)
    n_head = hparams.get("num_attention_heads")
    n_kv_head = hparams.get("num_key_value_heads", n_head)
    name_map = gguf.get_tensor_name_map(family.arch, block_count(hparams))
    targets = _extra_targets(family, hparams, rope)
    skipped: list[str] = []
    unknown: list[str] = []
    for name, shape in tensors:
        if name.endswith(_UNUSED_SUFFIXES) or name in family.drop or not is_language_model_tensor(name):
            skipped.append(name)
            continue
        found = name_map.get_type_and_name(name.replace("language_model.", ""), try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in gguf.MODEL_TENSORS[family.arch]:
            unknown.append(name)
            continue
        kind, gguf_name = found
        heads = None
        if family.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            heads = n_head
        elif family.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = n_kv_head
        rows = _vocab_rows(tokenizer_size, family, shape) if "embed_tokens.weight" in name else None
        out_shape = (rows, *shape[1:]) if rows is not None else tuple(shape)
        shift = 1.0 if family.norm_shift and name.endswith("norm.weight") else 0.0
        targets.append(
            TensorTarget(gguf_name, kind, out_shape, source=name, permute_heads=heads, shift=shift, rows=rows)
        )
    if unknown:
        listed = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise GGUFError(
            f"{len(unknown)} tensors have no llama.cpp name for {family.arch.name.lower()}: {listed}.",
            hint="The model has tensors llama.cpp's converter does not know; write safetensors only.",
        )
    return ModelMap(family, hparams, tuple(targets), tuple(skipped))


def _permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """Hugging Face's rotary halves → llama.cpp's interleaved pairs, per head."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def prepare_tensor(target: TensorTarget, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """The tensor as llama.cpp stores it, in float32 (or float16 when the source is float16, as the converter keeps
    it)."""
    if tensor is None:
        return torch.tensor(target.values, dtype=torch.float32)
    if tensor.dtype not in (torch.float16, torch.float32):
        tensor = tensor.to(torch.float32)
    if target.rows is not None:
        tensor = tensor[: target.rows]
    if target.shift:
        tensor = tensor + target.shift
    if target.permute_heads is not None:
        tensor = _permute(tensor, target.permute_heads)
    return tensor
