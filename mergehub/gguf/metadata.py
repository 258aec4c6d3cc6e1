"""The GGUF key-value metadata of a model: `general.*`, and the architecture's hyperparameters from config.json.

The keys and where their values come from follow `convert_hf_to_gguf.py` (`TextModel.set_gguf_parameters`
and the Llama, Qwen2/3, Gemma 2/3 and Phi-3 classes), so llama.cpp reads the same model from either file.
Values are collected as writer calls, then applied to each file's `gguf.GGUFWriter`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gguf

from mergehub.errors import GGUFError
from mergehub.gguf.arch import ModelMap, block_count, rope_parameters

__all__ = ["ModelInfo", "Metadata", "model_metadata"]

Call = tuple[str, tuple[Any, ...]]  # (GGUFWriter method name, arguments)


@dataclass(frozen=True)
class ModelInfo:
    """What the `general.*` keys say about the model: its name, license, the models it was made from, tags."""

    name: str
    license: str | None = None
    base_models: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Metadata:
    """Writer calls that set a file's metadata, in order; each key is set once."""

    calls: tuple[Call, ...] = field(default_factory=tuple)

    def apply(self, writer: gguf.GGUFWriter) -> None:
        """Set every key on `writer`."""
        for method, args in self.calls:
            getattr(writer, method)(*args)


class _Keys:
    """Stands in for a `gguf.GGUFWriter`, recording its `add_*` calls.

    A later call for the same key replaces the earlier one, as the converter's do; indexed keys
    (`add_base_model_name(0, ...)`) are told apart by their index.
    """

    def __init__(self) -> None:
        self.calls: dict[tuple[str, int | None], tuple[Any, ...]] = {}

    def __getattr__(self, method: str) -> Callable[..., None]:
        if not method.startswith("add_"):
            raise AttributeError(method)

        def add(*args: Any) -> None:
            index = args[0] if len(args) > 1 and isinstance(args[0], int) else None
            self.calls[(method, index)] = args

        return add


def _find(hparams: Mapping[str, Any], *keys: str) -> Any:
    return next((hparams[k] for k in keys if k in hparams), None)


def _rope_scaling(keys: _Keys, params: Mapping[str, Any]) -> None:
    rope_type, factor = params.get("rope_type"), params.get("factor")
    if rope_type == "linear" and factor is not None:
        keys.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        keys.add_rope_scaling_factor(factor)
    elif rope_type == "yarn" and factor is not None:
        keys.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        keys.add_rope_scaling_factor(factor)
        keys.add_rope_scaling_orig_ctx_len(params["original_max_position_embeddings"])
        for option, method in (
            ("extrapolation_factor", "add_rope_scaling_yarn_ext_factor"),
            ("beta_fast", "add_rope_scaling_yarn_beta_fast"),
            ("beta_slow", "add_rope_scaling_yarn_beta_slow"),
        ):
            if params.get(option) is not None:
                getattr(keys, method)(params[option])
        if (attention := params.get("attention_factor", params.get("attn_factor"))) is not None:
            keys.add_rope_scaling_yarn_attn_factor(attention)
    elif rope_type in ("su", "longrope"):
        keys.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)


def _text_model(keys: _Keys, hp: Mapping[str, Any], rope: Mapping[str, Any]) -> None:
    """`TextModel.set_gguf_parameters`: the keys every text model shares (MoE keys left out: no MoE is exported)."""
    keys.add_block_count(block_count(hp))
    for method, names in (
        (
            "add_context_length",
            (
                "max_position_embeddings",
                "n_ctx",
                "n_positions",
                "max_length",
                "max_sequence_length",
                "model_max_length",
            ),
        ),
        ("add_embedding_length", ("hidden_size", "n_embd", "dim")),
        (
            "add_feed_forward_length",
            ("prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"),
        ),
        ("add_head_count", ("num_attention_heads", "n_head", "n_heads")),
        ("add_head_count_kv", ("num_key_value_heads", "n_kv_heads")),
    ):
        if (value := _find(hp, *names)) is not None:
            getattr(keys, method)(value)
    if hp.get("is_causal") is False:
        keys.add_causal_attention(False)
    params = rope.get("full_attention", rope)
    _rope_scaling(keys, params)
    if (theta := params.get("rope_theta")) is not None:
        keys.add_rope_freq_base(theta)
    if (local := rope.get("sliding_attention", {}).get("rope_theta")) is not None:
        keys.add_rope_freq_base_swa(local)
    if (eps := _find(hp, "rms_norm_eps", "norm_eps")) is not None:
        keys.add_layer_norm_rms_eps(eps)
    if (eps := _find(hp, "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")) is not None:
        keys.add_layer_norm_eps(eps)
    if (head_dim := hp.get("head_dim")) is not None:
        keys.add_key_length(head_dim)
        keys.add_value_length(head_dim)


def _gemma2(keys: _Keys, hp: Mapping[str, Any]) -> None:
    """Gemma 2 sets its own keys only (no rope base, as the converter)."""
    keys.add_context_length(hp["max_position_embeddings"])
    keys.add_embedding_length(hp["hidden_size"])
    keys.add_block_count(block_count(hp))
    keys.add_feed_forward_length(hp["intermediate_size"])
    keys.add_head_count(hp["num_attention_heads"])
    keys.add_head_count_kv(hp.get("num_key_value_heads", hp["num_attention_heads"]))
    keys.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    keys.add_key_length(hp["head_dim"])
    keys.add_value_length(hp["head_dim"])


def _gemma3(keys: _Keys, hp: Mapping[str, Any], rope: Mapping[str, Any]) -> None:
    _text_model(keys, hp, rope)
    keys.add_context_length(hp.get("max_position_embeddings", 131072))
    keys.add_head_count(hp.get("num_attention_heads", 8))
    keys.add_layer_norm_rms_eps(hp.get("rms_norm_eps", 1e-6))
    keys.add_key_length(hp.get("head_dim", 256))
    keys.add_value_length(hp.get("head_dim", 256))
    keys.add_rope_freq_base(rope.get("full_attention", rope).get("rope_theta", 1_000_000.0))
    if final := hp.get("final_logit_softcapping"):
        keys.add_final_logit_softcapping(final)
    if hp.get("sliding_window_pattern") != 1:
        keys.add_sliding_window(hp["sliding_window"])
    keys.add_head_count_kv(hp.get("num_key_value_heads", 4))


def _phi3(keys: _Keys, hp: Mapping[str, Any], rope: Mapping[str, Any]) -> None:
    """Phi-3 sets its own keys, with the rope dimensions and the long-rope attention factor."""
    n_embd, n_head = hp["hidden_size"], hp["num_attention_heads"]
    max_positions = _find(hp, "n_positions", "max_position_embeddings")
    original = rope.get("original_max_position_embeddings")
    if original is None:
        raise GGUFError(
            "The Phi-3 config has no original_max_position_embeddings.", hint="llama.cpp needs it for Phi-3."
        )
    rope_dims = int(rope.get("partial_rotary_factor", 1.0) * n_embd) // n_head
    keys.add_context_length(max_positions)
    keys.add_rope_scaling_orig_ctx_len(original)
    keys.add_embedding_length(n_embd)
    keys.add_feed_forward_length(hp["intermediate_size"])
    keys.add_block_count(block_count(hp))
    keys.add_head_count(n_head)
    keys.add_head_count_kv(hp["num_key_value_heads"])
    keys.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    keys.add_rope_dimension_count(rope_dims)
    keys.add_rope_freq_base(rope.get("full_attention", rope)["rope_theta"])
    keys.add_sliding_window(hp.get("sliding_window") or 0)
    if rope.get("long_factor"):
        scale = max_positions / original
        kind = str(rope.get("rope_type", "")).lower()
        if kind in ("su", "longrope"):
            keys.add_rope_scaling_attn_factors(
                math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
            )
        elif kind == "yarn":
            keys.add_rope_scaling_attn_factors(0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0)
        else:
            raise GGUFError(f"Phi-3 rope scaling {kind!r} is not one llama.cpp converts.")


def _architecture(keys: _Keys, model: ModelMap) -> None:
    hp, family = model.hparams, model.family.name
    rope = rope_parameters(hp)
    if family == "gemma2":
        _gemma2(keys, hp)
        keys.add_attn_logit_softcapping(hp["attn_logit_softcapping"])
        keys.add_final_logit_softcapping(hp["final_logit_softcapping"])
        keys.add_sliding_window(hp["sliding_window"])
    elif family == "gemma3":
        _gemma3(keys, hp, rope)
    elif family == "phi3":
        _phi3(keys, hp, rope)
    else:
        _text_model(keys, hp, rope)
        if family == "llama":
            keys.add_vocab_size(hp["vocab_size"])
            keys.add_rope_dimension_count(hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"])


def model_metadata(model: ModelMap, info: ModelInfo, file_type: gguf.LlamaFileType) -> Metadata:
    """The `general.*` keys, the architecture's hyperparameters and the file type, for one file.

    Raises:
        GGUFError: the config lacks a value llama.cpp needs.
    """
    keys = _Keys()
    keys.add_type(gguf.GGUFType.MODEL)
    general = gguf.Metadata(
        name=info.name,
        license=info.license,
        size_label=gguf.size_label(model.parameters, 0, 0, 0),
        base_models=[_base_model(ref) for ref in info.base_models] or None,
        tags=list(info.tags) or None,
    )
    general.set_gguf_meta_model(keys)  # type: ignore[arg-type]
    try:
        _architecture(keys, model)
    except KeyError as e:
        raise GGUFError(f"The config.json lacks {e.args[0]!r}, which llama.cpp needs for {model.family.name}.") from e
    keys.add_file_type(file_type)
    keys.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return Metadata(tuple((method, args) for (method, _), args in keys.calls.items()))


def _base_model(ref: str) -> dict[str, str]:
    """A `general.base_model.N.*` entry: name, organization and URL of a Hub model (a local path: its name only)."""
    if "/" in ref and not ref.startswith((".", "/", "~")):
        organization, name = ref.split("/", 1)
        return {"name": name, "organization": organization, "repo_url": f"https://huggingface.co/{ref}"}
    return {"name": ref.rstrip("/").split("/")[-1]}
