"""DARE: drop each task-vector entry at random, keeping a fraction `density`, and rescale."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods._primitives import flat_inputs, generalized_task_arithmetic, non_base, random_mask
from mergehub.methods.registry import MethodSpec
from mergehub.methods.task_arithmetic import gta_params


def _dare(
    method: str,
    consensus: bool,
    tensors: Sequence[torch.Tensor],
    base_index: int | None,
    weight: Sequence[float | None],
    density: Sequence[float | None],
    lambda_: float,
    normalize: bool,
    rescale: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """Randomly prune every task vector, then merge them (sign-elected with `consensus`)."""
    flat, base_index = flat_inputs(method, tensors, base_index, weight=weight, density=density)
    base = flat[base_index]
    masks = [random_mask(base, d, generator) for d in non_base(density, base_index)]
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


def dare_ties(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float | None],
    density: Sequence[float | None],
    generator: torch.Generator,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    int8_mask: bool = False,
) -> torch.Tensor:
    """Keep each task-vector entry with probability `density`, restore the L1 norm, then merge with TIES sign election.

    `rescale` matches the L1 norm as mergekit does, not the paper's 1/density. `int8_mask` changes nothing here.
    """
    return _dare("dare_ties", True, tensors, base_index, weight, density, lambda_, normalize, rescale, generator)


def dare_linear(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float | None],
    density: Sequence[float | None],
    generator: torch.Generator,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    int8_mask: bool = False,
) -> torch.Tensor:
    """Keep each task-vector entry with probability `density`, restore the L1 norm, and add them up.

    `int8_mask` changes nothing here.
    """
    return _dare("dare_linear", False, tensors, base_index, weight, density, lambda_, normalize, rescale, generator)


SPEC = MethodSpec(
    name="dare_ties",
    kernel=dare_ties,
    params=gta_params(normalize=False, rescale=True),
    summary="Randomly drops task-vector entries and rescales, then merges with TIES sign election.",
    paper="https://arxiv.org/abs/2311.03099",
    base="required",
    random=True,
)

LINEAR_SPEC = MethodSpec(
    name="dare_linear",
    kernel=dare_linear,
    params=gta_params(normalize=False, rescale=True),
    summary="Randomly drops task-vector entries and rescales, then adds them to the base.",
    paper="https://arxiv.org/abs/2311.03099",
    base="required",
    random=True,
)
