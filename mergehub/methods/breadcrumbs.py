"""Model Breadcrumbs: drop each task vector's largest outliers and its smallest entries."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods._primitives import (
    delta_magnitude,
    flat_inputs,
    generalized_task_arithmetic,
    non_base,
    outlier_mask,
)
from mergehub.methods.registry import MethodSpec, ParamSpec
from mergehub.methods.task_arithmetic import gta_params


def _breadcrumbs(
    method: str,
    consensus: bool,
    tensors: Sequence[torch.Tensor],
    base_index: int | None,
    weight: Sequence[float | None],
    density: Sequence[float | None],
    gamma: Sequence[float | None],
    lambda_: float,
    normalize: bool,
    rescale: bool,
) -> torch.Tensor:
    """Prune every task vector to its middle band of magnitudes, then merge them (sign-elected with `consensus`)."""
    flat, base_index = flat_inputs(method, tensors, base_index, weight=weight, density=density, gamma=gamma)
    base = flat[base_index]
    masks = [
        outlier_mask(delta_magnitude(t, base), base, d, g)
        for t, d, g in zip(non_base(flat, base_index), non_base(density, base_index), non_base(gamma, base_index))
    ]
    merged = generalized_task_arithmetic(
        flat,
        base_index,
        non_base(weight, base_index),
        masks,
        rescale=rescale,
        consensus=consensus,
        normalize=normalize,
        lambda_=lambda_,
    )
    return merged.view(tensors[base_index].shape)


def breadcrumbs(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float | None],
    density: Sequence[float | None],
    gamma: Sequence[float | None],
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = False,
    int8_mask: bool = False,
) -> torch.Tensor:
    """Drop the `gamma` largest and then the smallest entries of each task vector down to `density`, and add them up.

    As in mergekit 0.1.5, `int(gamma * numel) == 0` drops no outliers, and
    `int(density * numel) == 0` keeps nothing. `int8_mask` changes nothing here.
    """
    return _breadcrumbs("breadcrumbs", False, tensors, base_index, weight, density, gamma, lambda_, normalize, rescale)


def breadcrumbs_ties(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float | None],
    density: Sequence[float | None],
    gamma: Sequence[float | None],
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = False,
    int8_mask: bool = False,
) -> torch.Tensor:
    """Breadcrumbs pruning followed by TIES sign election. `int8_mask` changes nothing here."""
    return _breadcrumbs(
        "breadcrumbs_ties", True, tensors, base_index, weight, density, gamma, lambda_, normalize, rescale
    )


_PARAMS = gta_params(normalize=False, rescale=False, extra=(ParamSpec("gamma", float, "non_base", 0.01),))

SPEC = MethodSpec(
    name="breadcrumbs",
    kernel=breadcrumbs,
    params=_PARAMS,
    summary="Drops each task vector's largest outliers and smallest entries, then adds the rest to the base.",
    paper="https://arxiv.org/abs/2312.06795",
    base="required",
)

TIES_SPEC = MethodSpec(
    name="breadcrumbs_ties",
    kernel=breadcrumbs_ties,
    params=_PARAMS,
    summary="Breadcrumbs pruning followed by TIES sign election.",
    paper="https://arxiv.org/abs/2312.06795",
    base="required",
)
