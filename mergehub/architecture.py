"""Model structure read from tensor names and configs: layer indices, tensor groups, layer counts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["LayerName", "parse_layer_name", "tensor_group", "num_layers", "LAYER_COUNT_KEYS", "text_config"]

_LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks|layer|decoder_layers))\.(?P<index>\d+)\.(?P<suffix>.+)$")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_PRE_MARKERS = ("embed", "wte", "wpe", "word_embeddings")

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


def parse_layer_name(name: str) -> LayerName | None:
    """Split a tensor name at its layer index, or None for tensors outside the layer stack."""
    match = _LAYER.match(name)
    if match is None:
        return None
    return LayerName(match["prefix"], int(match["index"]), match["suffix"])


def tensor_group(name: str) -> Group:
    """Whether a tensor comes before the layers (embeddings), in a layer, or after (norm, head)."""
    if parse_layer_name(name) is not None:
        return "layer"
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
