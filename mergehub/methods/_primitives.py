"""Math shared by several merge methods: weighting, task vectors and interpolation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.errors import MergeMethodError


def check_same_shape(tensors: Sequence[torch.Tensor]) -> None:
    """Raise when the inputs do not all have one shape."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise MergeMethodError(f"Input tensors have different shapes: {sorted(shapes)}.")


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Sum of `weights[i] * tensors[i]`, accumulated in the tensors' dtype."""
    result = torch.zeros_like(tensors[0])
    for tensor, weight in zip(tensors, weights):
        result.add_(tensor, alpha=float(weight))
    return result


def task_vectors(tensors: Sequence[torch.Tensor], base_index: int) -> list[torch.Tensor]:
    """The difference of each non-base tensor from the base, in input order."""
    base = tensors[base_index]
    return [t - base for i, t in enumerate(tensors) if i != base_index]


def non_base(values: Sequence, base_index: int) -> list:
    """`values` without the base model's entry."""
    return [v for i, v in enumerate(values) if i != base_index]


def lerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Linear interpolation `(1 - t) * a + t * b`."""
    return (1 - t) * a + t * b
