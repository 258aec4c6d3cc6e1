"""NuSLERP: spherical interpolation of two models, weighted, per row or flat, optionally around a base."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.errors import MergeMethodError
from mergehub.methods._primitives import check_same_shape, non_base
from mergehub.methods._spherical import slerp_rows
from mergehub.methods.spec import MethodSpec, ParamSpec


def nuslerp(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float | None],
    nuslerp_row_wise: bool,
    nuslerp_flatten: bool,
) -> torch.Tensor:
    """SLERP from the first to the second non-base model by `t = w2 / (w1 + w2)` (0.5 when the sum is ~0).

    With a base, the task vectors (model - base) are interpolated and added to the base.
    `nuslerp_flatten` treats the tensor as one vector; otherwise each vector along the
    last axis, or along the first axis when `nuslerp_row_wise`, is interpolated alone.

    Raises:
        MergeMethodError: there are not exactly two non-base models.
    """
    check_same_shape(tensors)
    models = list(tensors) if base_index is None else non_base(tensors, base_index)
    weights = list(weight) if base_index is None else non_base(weight, base_index)
    if len(models) != 2:
        raise MergeMethodError(
            f"nuslerp interpolates exactly two models (besides an optional base); got {len(models)}.",
            hint="List exactly two non-base models, or use multislerp for more.",
        )
    total = weights[0] + weights[1]
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    if base_index is None:
        return _interpolate(t, models[0], models[1], nuslerp_row_wise, nuslerp_flatten)
    base = tensors[base_index]
    return base + _interpolate(t, models[0] - base, models[1] - base, nuslerp_row_wise, nuslerp_flatten)


def _interpolate(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool) -> torch.Tensor:
    """`slerp_rows` over the whole tensor, its first-axis vectors, or its last-axis vectors."""
    if flatten:
        return slerp_rows(t, v0.reshape(-1), v1.reshape(-1)).reshape(v0.shape)
    if row_wise:
        return slerp_rows(t, v0.transpose(0, -1), v1.transpose(0, -1)).transpose(0, -1)
    return slerp_rows(t, v0, v1)


SPEC = MethodSpec(
    name="nuslerp",
    kernel=nuslerp,
    params=(
        ParamSpec("weight", float, "non_base"),
        ParamSpec("nuslerp_row_wise", bool, "shared", False),
        ParamSpec("nuslerp_flatten", bool, "shared", True),
    ),
    summary="Weighted SLERP of two models, per row or whole tensor, optionally of their task vectors around a base.",
    base="optional",
    min_inputs=2,
    max_inputs=3,
    min_non_base=2,
    max_non_base=2,
)
