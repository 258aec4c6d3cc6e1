"""Model structure read from tensor names and configs: modules, layer indices, tensor groups, layer counts.

Modules are mergekit's: a text-only model is one module, `default`; a multimodal one has a
`text_decoder`, a `multi_modal_projector` and its tower(s), named after the tensors' prefix
(`vision_tower`, `vision_model`, `audio_tower`; Qwen-VL's `visual` is mergekit's `vision_tower`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "LayerName",
    "parse_layer_name",
    "split_layer_name",
    "module_of",
    "module_group",
    "DEFAULT_MODULE",
    "TEXT_MODULE",
    "tensor_group",
    "is_language_model_tensor",
    "num_layers",
    "per_layer_keys",
    "LAYER_COUNT_KEYS",
    "text_config",
]

# The first `layers.N.` (or `h.N.`, ...) in a name is the layer index: expert or sub-block lists nest inside it.
_LAYER = re.compile(r"^(?P<prefix>(?:.*?\.)?(?:layers|h|blocks|layer|decoder_layers))\.(?P<index>\d+)\.(?P<suffix>.+)$")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_PRE_MARKERS = ("embed", "wte", "wpe", "word_embeddings", "project_in")
# Output heads, some of which are named like embeddings (GPT-NeoX's `embed_out`): these come after the layers.
_HEAD = re.compile(r"(?:^|\.)(?:lm_head|embed_out|output|output_layer)\.")
# Modules of multimodal models outside the language model: vision and audio towers, their projectors.
_NON_TEXT = re.compile(
    r"(?:^|\.)(?:[a-z_]*(?:vision|visual|audio|speech)[a-z_]*|multi_modal_projector|mm_projector|image_newline)(?:\.|$)"
)

# The first component naming a tower (vision or audio), and the projectors between a tower and the language model.
_TOWER = re.compile(r"(?:^|\.)([a-z_]*(?:vision|visual|audio|speech)[a-z_]*)(?:\.|$)")
_PROJECTOR = re.compile(
    r"(?:^|\.)(?:multi_modal_projector|mm_projector|image_newline|merger|deepstack_merger_list)(?:\.|$)"
)
_TOWER_NAMES = {"visual": "vision_tower"}
# Tower tensors after the layers (SigLIP's `post_layernorm`, Llama 4's `layernorm_post` and `vision_adapter`).
_TOWER_POST = re.compile(r"post|adapter")
DEFAULT_MODULE = "default"
TEXT_MODULE = "text_decoder"

# Lists that can happen to be as long as the layer stack without being per-layer.
_NOT_PER_LAYER = ("architectures", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "forced_decoder_ids")

Group = Literal["pre", "layer", "post"]


@dataclass(frozen=True)
class LayerName:
    """A per-layer tensor name split around its layer index: `prefix.{index}.suffix`."""

    prefix: str
    index: int
    suffix: str

    def renumbered(self, index: int) -> str:
        """The same tensor in layer `index`."""
        return f"{self.prefix}.{index}.{self.suffix}"


def is_language_model_tensor(name: str) -> bool:
    """Whether a tensor belongs to the language model rather than a vision or audio tower or its projector."""
    return _NON_TEXT.search(name) is None


def split_layer_name(name: str) -> LayerName | None:
    """Split a tensor name at its layer index in any module (a vision tower's too), or None outside a layer stack."""
    match = _LAYER.match(name)
    if match is None or _PROJECTOR.search(name):
        return None
    return LayerName(match["prefix"], int(match["index"]), match["suffix"])


def parse_layer_name(name: str) -> LayerName | None:
    """Split a tensor name at its layer index, or None for tensors outside the language model's layer stack."""
    return split_layer_name(name) if is_language_model_tensor(name) else None


def module_of(name: str) -> str:
    """mergekit's name for the module of a multimodal model that a tensor belongs to.

    `text_decoder` for the language model (a text-only model's single module is `default`).
    """
    if is_language_model_tensor(name):
        return TEXT_MODULE
    if _PROJECTOR.search(name):
        return "multi_modal_projector"
    tower = _TOWER.search(name)
    return _TOWER_NAMES.get(tower[1], tower[1]) if tower else "multi_modal_projector"


def module_group(name: str) -> Group:
    """Like `tensor_group`, within the tensor's own module: a tower's patch embedding is "pre", its final norm
    "post"."""
    if is_language_model_tensor(name):
        return tensor_group(name)
    if split_layer_name(name) is not None:
        return "layer"
    return "post" if _TOWER_POST.search(name) else "pre"


def tensor_group(name: str) -> Group:
    """Whether a tensor comes before the layers (embeddings), in a layer, or after (final norm, output head).

    Tensors outside the language model (`is_language_model_tensor`) count as "pre", so that a
    vision tower and its projector are planned whole, with the embeddings.
    """
    if not is_language_model_tensor(name):
        return "pre"
    if parse_layer_name(name) is not None:
        return "layer"
    if _HEAD.search(name):
        return "post"
    return "pre" if any(marker in name for marker in _PRE_MARKERS) else "post"


def text_config(config: dict) -> dict:
    """The part of a config that describes the language model (`text_config` for multimodal ones)."""
    return config.get("text_config") or config


def num_layers(config: dict) -> int | None:
    """The layer count from the config's usual keys, or None when it names none."""
    config = text_config(config)
    for key in LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int):
            return config[key]
    return None


def per_layer_keys(config: dict) -> list[str]:
    """Keys of the language model's config whose lists hold one entry per layer (`layer_types`, ...)."""
    count = num_layers(config)
    if count is None:
        return []
    return [
        key
        for key, value in text_config(config).items()
        if isinstance(value, list) and len(value) == count and not _not_per_layer(key)
    ]


def _not_per_layer(key: str) -> bool:
    return key in _NOT_PER_LAYER or key.endswith(("_token_id", "_token_ids"))
