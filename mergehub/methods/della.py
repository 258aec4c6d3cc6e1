"""DELLA: drop task-vector entries at random, the smaller ones more often (MagPrune), and rescale."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods._primitives import flat_inputs, generalized_task_arithmetic, magprune_mask, non_base
from mergehub.methods.registry import MethodSpec, ParamSpec
from mergehub.methods.task_arithmetic import gta_params


def _della(
    method: str,
    consensus: bool,
    tensors: Sequence[torch.Tensor],
    base_index: int | None,
    weight: Sequence[float | None],
    density: Sequence[float | None],
    epsilon: Sequence[float | None],
    lambda_: float,
    normalize: bool,
    rescale: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """MagPrune every task vector, then merge them (sign-elected with `consensus`)."""
    flat, base_index = flat_inputs(method, tensors, base_index, weight=weight, density=density, epsilon=epsilon)
    base = tensors[base_index]
    masks = [
        magprune_mask(t, base, d, e, generator)
        for t, d, e in zip(non_base(tensors, base_index), non_base(density, base_index), non_base(epsilon, base_index))
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
    return merged.view(base.shape)


def della(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float | None],
    density: Sequence[float | None],
    epsilon: Sequence[float | None],
    generator: torch.Generator,
    lambda_: float = 1.0,
    normalize: bool = True,
    rescale: bool = True,
    int8_mask: bool = False,
) -> torch.Tensor:
    """Keep each entry with probability `density ± epsilon` by its magnitude's rank in its row, then merge as TIES.

    `int8_mask` changes nothing here.
    """
    return _della("della", True, tensors, base_index, weight, density, epsilon, lambda_, normalize, rescale, generator)


def della_linear(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float | None],
    density: Sequence[float | None],
    epsilon: Sequence[float | None],
    generator: torch.Generator,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    int8_mask: bool = False,
) -> torch.Tensor:
    """Keep each entry with probability `density ± epsilon` by its magnitude's rank in its row, and add them up.

    `int8_mask` changes nothing here.
    """
    return _della(
        "della_linear", False, tensors, base_index, weight, density, epsilon, lambda_, normalize, rescale, generator
    )


_PARAMS_EXTRA = (ParamSpec("epsilon", float, "non_base", 0.15),)

SPEC = MethodSpec(
    name="della",
    kernel=della,
    params=gta_params(normalize=True, rescale=True, extra=_PARAMS_EXTRA),
    summary="Drops smaller task-vector entries more often (MagPrune), rescales, and merges with sign election.",
    paper="https://arxiv.org/abs/2406.11617",
    base="required",
    random=True,
)

LINEAR_SPEC = MethodSpec(
    name="della_linear",
    kernel=della_linear,
    params=gta_params(normalize=False, rescale=True, extra=_PARAMS_EXTRA),
    summary="Drops smaller task-vector entries more often (MagPrune), rescales, and adds them to the base.",
    paper="https://arxiv.org/abs/2406.11617",
    base="required",
    random=True,
)
