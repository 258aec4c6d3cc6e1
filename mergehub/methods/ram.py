"""RAM and RAM+ (tensor-local): add task vectors, averaging only where several models changed a parameter."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods._primitives import check_same_shape, task_vectors
from mergehub.methods.spec import MethodSpec, ParamSpec


def ram(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    epsilon: float,
) -> torch.Tensor:
    """Add to the base each parameter's task-vector entries above `epsilon`, averaged over the models that have one."""
    check_same_shape(tensors)
    assert base_index is not None
    if len(tensors) == 1:
        return tensors[base_index].clone()
    vectors, _, counts = _active_task_vectors(tensors, base_index, epsilon)
    return tensors[base_index] + _combine(vectors, counts, 1.0).reshape(tensors[base_index].shape)


def ramplus_tl(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    r: float,
    alpha: float,
    epsilon: float,
) -> torch.Tensor:
    """RAM, with each model's unique entries scaled by `1 + r * clamp(shared / unique, 0, alpha)`.

    `shared` and `unique` count the model's entries above `epsilon` that other models also
    change, or that only it changes, in this tensor.
    """
    check_same_shape(tensors)
    assert base_index is not None
    if len(tensors) == 1:
        return tensors[base_index].clone()
    vectors, active, counts = _active_task_vectors(tensors, base_index, epsilon)
    shared = (active & (counts > 1)).sum(dim=1, keepdim=True).to(vectors.dtype)
    unique = (active & (counts == 1)).sum(dim=1, keepdim=True).to(vectors.dtype)
    boost = 1 + r * (shared / unique.clamp(min=epsilon)).clamp(0, alpha)
    return tensors[base_index] + _combine(vectors, counts, boost).reshape(tensors[base_index].shape)


def _active_task_vectors(
    tensors: Sequence[torch.Tensor], base_index: int, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat task vectors zeroed where |entry| <= epsilon, that mask, and per-parameter counts of models."""
    vectors = torch.stack(task_vectors(tensors, base_index)).reshape(len(tensors) - 1, -1)
    active = vectors.abs() > epsilon
    return vectors * active, active, active.sum(dim=0, keepdim=True)


def _combine(vectors: torch.Tensor, counts: torch.Tensor, unique_scale: float | torch.Tensor) -> torch.Tensor:
    """Sum of the models' entries: unique ones times `unique_scale`, shared ones divided by their count."""
    return torch.where(counts == 1, vectors * unique_scale, vectors / counts.clamp(min=1)).sum(dim=0)


SPEC = MethodSpec(
    name="ram",
    kernel=ram,
    params=(ParamSpec("epsilon", float, "shared", 1e-5),),
    summary="Adds task vectors, averaging each parameter only over the models that change it by more than epsilon.",
    paper="https://arxiv.org/abs/2601.13572",
    base="required",
)

PLUS_TL_SPEC = MethodSpec(
    name="ramplus_tl",
    kernel=ramplus_tl,
    params=(
        ParamSpec("r", float, "shared", 0.1),
        ParamSpec("alpha", float, "shared", 0.2),
        ParamSpec("epsilon", float, "shared", 1e-5),
    ),
    summary="RAM with each model's unique entries boosted by its shared/unique overlap ratio within the tensor.",
    paper="https://arxiv.org/abs/2601.13572",
    base="required",
)
