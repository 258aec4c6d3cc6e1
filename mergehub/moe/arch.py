"""The MoE architectures mergehub assembles, what each accepts, its config and where each tensor goes.

Output is in the checkpoint layout on the Hub (what transformers' `save_pretrained` writes, and what
llama.cpp and vLLM read): one tensor per expert and projection, e.g. Mixtral's
`model.layers.0.block_sparse_moe.experts.1.w1.weight`. (mergekit-moe 0.1.5 writes transformers 5's
fused in-memory layout instead, `mlp.experts.gate_up_proj`; both load into the same model.)

Which architecture a config gets follows mergekit-moe: `architecture:` narrows the candidates by
name prefix (`mixtral`, `qwen`, `qwen3`); of those that accept the models, Mixtral is preferred,
else the first in the order Mixtral, Qwen MoE (Qwen2-MoE), Qwen3 MoE.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MoEArchitecture", "ARCHITECTURES", "DENSE_MLP", "select_architecture", "UNSUPPORTED"]

DENSE_MLP = ("gate_proj", "up_proj", "down_proj")
"""The projections of a dense (Llama-style) MLP, each becoming one tensor per expert."""
RESIDUAL = "down_proj"
"""The projection an expert's `residual_scale` scales (it writes into the residual stream)."""

_COMMON = (
    r"model\.embed_tokens\.weight",
    r"model\.norm\.weight",
    r"lm_head\.weight",
    r"model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight",
    r"model\.layers\.\d+\.self_attn\.[qkvo]_proj\.weight",
)

UNSUPPORTED = {"deepseek": "DeepSeek MoE (its modeling code runs only with trust_remote_code)"}
"""mergekit-moe's output architectures that mergehub does not build, by name prefix."""


@dataclass(frozen=True)
class MoEArchitecture:
    """One output architecture: the input model types it takes, its shared experts, config and tensor names."""

    name: str
    model_type: str
    class_name: str
    input_types: tuple[str, ...]
    shared_experts: int
    """How many shared (always active) experts it needs: exactly this many."""
    experts_key: str
    """The config key of the number of routed experts."""
    block: str
    """The layer's MoE block: `block_sparse_moe` (Mixtral) or `mlp`."""
    projections: tuple[tuple[str, str], ...]
    """Each dense projection and the expert's name for it (Mixtral: gate_proj → w1, down_proj → w2, up_proj → w3)."""
    copied: tuple[str, ...]
    """Patterns of the base's tensors the output holds (attention, norms, embeddings); the others are left out."""
    zero_biases: bool = False
    """Whether attention q/k/v biases the base lacks are written as zeros (the format always has them)."""

    def accepts(self, model_types: Sequence[str], shared: int, shared_prompts: bool, gate_mode: str) -> str | None:
        """None when the architecture can hold these models, else why not (mergekit-moe's rules)."""
        if shared != self.shared_experts:
            return f"{self.name} needs {'exactly one shared expert' if self.shared_experts else 'no shared experts'}"
        if self.shared_experts and gate_mode != "random" and not shared_prompts:
            return f"{self.name} needs prompts for its shared expert (its gate is computed from them)"
        if len(set(model_types)) != 1:
            return f"{self.name} needs all models of one architecture (they are {', '.join(sorted(set(model_types)))})"
        if model_types[0] not in self.input_types:
            return f"{self.name} takes {', '.join(self.input_types)} models, not {model_types[0]}"
        return None

    def config(self, base: dict, *, experts: int, experts_per_token: int, dtype: str | None) -> dict:
        """The output's config.json: the base's, as the MoE class (mergekit-moe's settings), `dtype` set when given."""
        config = copy.deepcopy(base)
        config["model_type"] = self.model_type
        config["architectures"] = [self.class_name]
        config[self.experts_key] = experts
        config["num_experts_per_tok"] = experts_per_token
        config["sliding_window"] = None
        intermediate = config.get("intermediate_size")
        if self.model_type == "qwen2_moe":
            config.update(
                decoder_sparse_step=1,
                norm_topk_prob=True,
                use_sliding_window=False,
                shared_expert_intermediate_size=intermediate,
                moe_intermediate_size=intermediate,
            )
        elif self.model_type == "qwen3_moe":
            config.update(decoder_sparse_step=1, norm_topk_prob=True, moe_intermediate_size=intermediate)
        if dtype is not None:
            config["torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"] = dtype
        return config

    def is_copied(self, name: str) -> bool:
        """Whether the output holds this tensor of the base."""
        return any(re.fullmatch(pattern, name) for pattern in self.copied)

    def expert_tensor(self, layer: int, expert: int, projection: str) -> str:
        """The output name of an expert's projection."""
        return f"model.layers.{layer}.{self.block}.experts.{expert}.{dict(self.projections)[projection]}.weight"

    def shared_tensor(self, layer: int, projection: str) -> str:
        """The output name of the shared expert's projection."""
        return f"model.layers.{layer}.mlp.shared_expert.{projection}.weight"

    def router_tensor(self, layer: int) -> str:
        """The output name of a layer's router (gate) over the routed experts."""
        return f"model.layers.{layer}.{self.block}.gate.weight"

    def shared_router_tensor(self, layer: int) -> str:
        """The output name of a layer's shared-expert gate."""
        return f"model.layers.{layer}.mlp.shared_expert_gate.weight"


_IDENTITY = tuple((p, p) for p in DENSE_MLP)

ARCHITECTURES = (
    MoEArchitecture(
        "Mixtral",
        "mixtral",
        "MixtralForCausalLM",
        ("llama", "mistral"),
        0,
        "num_local_experts",
        "block_sparse_moe",
        (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")),
        _COMMON,
    ),
    MoEArchitecture(
        "Qwen MoE",
        "qwen2_moe",
        "Qwen2MoeForCausalLM",
        ("llama", "mistral", "qwen2"),
        1,
        "num_experts",
        "mlp",
        _IDENTITY,
        (*_COMMON, r"model\.layers\.\d+\.self_attn\.[qkv]_proj\.bias"),
        zero_biases=True,
    ),
    MoEArchitecture(
        "Qwen3 MoE",
        "qwen3_moe",
        "Qwen3MoeForCausalLM",
        ("qwen3",),
        0,
        "num_experts",
        "mlp",
        _IDENTITY,
        (*_COMMON, r"model\.layers\.\d+\.self_attn\.[qk]_norm\.weight"),
    ),
)
"""The output architectures, in mergekit-moe's order of preference after Mixtral."""


def select_architecture(
    requested: str | None, model_types: Sequence[str], shared: int, shared_prompts: bool, gate_mode: str
) -> tuple[MoEArchitecture | None, list[str]]:
    """The architecture mergekit-moe would pick for these models, or None and why each candidate refused them."""
    candidates = [a for a in ARCHITECTURES if requested is None or a.name.lower().startswith(requested.lower())]
    reasons = []
    accepted = []
    for arch in candidates:
        reason = arch.accepts(model_types, shared, shared_prompts, gate_mode)
        if reason is None:
            accepted.append(arch)
        else:
            reasons.append(reason)
    if not accepted:
        return None, reasons
    return next((a for a in accepted if a.name == "Mixtral"), accepted[0]), reasons
