"""Small helpers for tests: load a model directory's tensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors model directory, sharded or not."""
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(directory / file))
    return tensors
