"""Task arithmetic: add weighted task vectors (model minus base) to the base."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods._primitives import check_same_shape, non_base, task_vectors, weighted_sum
from mergehub.methods.registry import MethodSpec, ParamSpec


def task_arithmetic(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float | None],
    lambda_: float = 1.0,
    normalize: bool = False,
    **_unused: object,
) -> torch.Tensor:
    """Return `base + lambda * sum(w_i * (x_i - base))`, the sum divided by `sum(w_i)` when normalized.

    A weight sum below 1e-8 in magnitude is not divided by, as in mergekit.
    """
    check_same_shape(tensors)
    assert base_index is not None
    base = tensors[base_index]
    weights = non_base(weight, base_index)
    if not weights:
        return base.clone()
    mixed = weighted_sum(task_vectors(tensors, base_index), weights)
    total = float(sum(weights))
    if normalize and abs(total) >= 1e-8:
        mixed.div_(total)
    if lambda_ != 1:
        mixed.mul_(lambda_)
    return base + mixed


SPEC = MethodSpec(
    name="task_arithmetic",
    kernel=task_arithmetic,
    params=(
        ParamSpec("weight", float, "non_base"),
        ParamSpec("lambda", float, "shared", 1.0),
        ParamSpec("normalize", bool, "shared", False),
        ParamSpec("density", float, "non_base", 1.0),
        ParamSpec("rescale", bool, "shared", False),
        ParamSpec("int8_mask", bool, "shared", False),
    ),
    summary="Adds the weighted task vectors (model - base) of each model to the base.",
    paper="https://arxiv.org/abs/2212.04089",
    base="required",
)
