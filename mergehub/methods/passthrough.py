"""Passthrough: copy one model's tensor unchanged (optionally scaled); used to stack layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods.spec import MethodSpec, ParamSpec


def passthrough(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    scale: Sequence[float | None],
) -> torch.Tensor:
    """Return the single input, multiplied by `scale` when one is given."""
    (tensor,) = tensors
    return tensor if scale[0] is None else tensor * scale[0]


SPEC = MethodSpec(
    name="passthrough",
    kernel=passthrough,
    params=(ParamSpec("scale", float, "input", None),),
    summary="Copies one model's tensors unchanged; slices of layers stack into a deeper model.",
    max_inputs=1,
    elementwise=True,
    stacks_layers=True,
)
