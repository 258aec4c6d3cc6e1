"""Task arithmetic: add weighted task vectors (model minus base) to the base.

It is the plainest member of mergekit's generalized task arithmetic family, whose shared
parameters `gta_params` lists; the other members prune and sign-elect the task vectors first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods._primitives import flat_inputs, generalized_task_arithmetic, non_base
from mergehub.methods.registry import MethodSpec, ParamSpec


def gta_params(*, normalize: bool, rescale: bool, extra: tuple[ParamSpec, ...] = ()) -> tuple[ParamSpec, ...]:
    """The parameters of a generalized task arithmetic method, with its defaults and extra per-model ones."""
    return (
        ParamSpec("weight", float, "non_base"),
        ParamSpec("density", float, "non_base", 1.0),
        *extra,
        ParamSpec("lambda", float, "shared", 1.0),
        ParamSpec("normalize", bool, "shared", normalize),
        ParamSpec("rescale", bool, "shared", rescale),
        ParamSpec("int8_mask", bool, "shared", False),
    )


def task_arithmetic(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float | None],
    density: Sequence[float | None] | None = None,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = False,
    int8_mask: bool = False,
) -> torch.Tensor:
    """Return `base + lambda * sum(w_i * (x_i - base))`, the sum divided by `sum(w_i)` when normalized.

    A weight sum below 1e-8 in magnitude is not divided by. `density`, `rescale` and
    `int8_mask` exist for mergekit compatibility and change nothing: nothing is pruned.
    """
    flat, base_index = flat_inputs("task_arithmetic", tensors, base_index, weight=weight)
    merged = generalized_task_arithmetic(
        flat,
        base_index,
        non_base(weight, base_index),
        [None] * (len(flat) - 1),
        rescale=False,
        consensus=False,
        normalize=normalize,
        lambda_=lambda_,
    )
    return merged.view(tensors[base_index].shape)


SPEC = MethodSpec(
    name="task_arithmetic",
    kernel=task_arithmetic,
    params=gta_params(normalize=False, rescale=False),
    summary="Adds the weighted task vectors (model - base) of each model to the base.",
    paper="https://arxiv.org/abs/2212.04089",
    base="required",
    elementwise=True,
)
