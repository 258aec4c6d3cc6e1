"""TIES: trim each task vector to its largest entries, elect a sign per entry, merge the agreeing ones."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods._primitives import (
    delta_magnitude,
    flat_inputs,
    generalized_task_arithmetic,
    magnitude_mask,
    non_base,
)
from mergehub.methods.registry import MethodSpec
from mergehub.methods.task_arithmetic import gta_params


def ties(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float | None],
    density: Sequence[float | None],
    lambda_: float = 1.0,
    normalize: bool = True,
    rescale: bool = False,
    int8_mask: bool = False,
) -> torch.Tensor:
    """Keep the `density` largest-magnitude entries of each task vector, then merge the weighted ones that agree in sign.

    Exactly `max(1, int(density * numel))` entries are kept, equal magnitudes ranking by
    position. `int8_mask` only saves memory in mergekit and changes nothing here.
    """
    flat, base_index = flat_inputs("ties", tensors, base_index, weight=weight, density=density)
    base = flat[base_index]
    masks = [
        magnitude_mask(delta_magnitude(t, base), base, d)
        for t, d in zip(non_base(flat, base_index), non_base(density, base_index))
    ]
    merged = generalized_task_arithmetic(
        flat,
        base_index,
        non_base(weight, base_index),
        masks,
        rescale=rescale,
        consensus=True,
        normalize=normalize,
        lambda_=lambda_,
    )
    return merged.view(tensors[base_index].shape)


SPEC = MethodSpec(
    name="ties",
    kernel=ties,
    params=gta_params(normalize=True, rescale=False),
    summary="Trims each task vector to its largest entries, elects signs, and averages the agreeing entries.",
    paper="https://arxiv.org/abs/2306.01708",
    base="required",
)
