"""Model Stock: move from the base toward the models' average by a ratio set by their angle."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch

from mergehub.errors import MergeMethodError
from mergehub.methods._primitives import check_same_shape, non_base
from mergehub.methods.spec import MethodSpec, ParamSpec


def model_stock(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    filter_wise: bool,
) -> torch.Tensor:
    """Return `t * mean(models) + (1 - t) * base` with `t = k cos / (1 + (k - 1) cos)`.

    `cos` is the mean pairwise cosine of the k task vectors (model - base), over the
    whole tensor, or per last-axis row when `filter_wise`. Where `1 + (k - 1) cos`
    is within 1e-6 of zero, t is 0 and the base is kept.

    Raises:
        MergeMethodError: there is no base or fewer than two other models.
    """
    check_same_shape(tensors)
    if base_index is None or len(tensors) < 3:
        raise MergeMethodError(
            f"model_stock needs a base and at least two other models; got {len(tensors)} input(s).",
            hint="Set `base_model` and list at least two other models.",
        )
    shape = tensors[base_index].shape
    rows = [_rows(x, filter_wise) for x in tensors]
    base, models = rows[base_index], non_base(rows, base_index)
    offsets = [m - base for m in models]
    cos = torch.stack([_cosine(a, b) for a, b in combinations(offsets, 2)]).mean(dim=0).unsqueeze(-1)
    k = len(models)
    denominator = 1 + (k - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0, k * cos / torch.where(singular, 1, denominator))
    return (t * (sum(models) / k) + (1 - t) * base).reshape(shape)


def _rows(x: torch.Tensor, filter_wise: bool) -> torch.Tensor:
    """`x` as the vectors whose angles are measured: its last-axis rows, or one flat vector."""
    if not filter_wise:
        return x.reshape(-1)
    return x if x.dim() > 1 else x.reshape(1, -1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of the angle between last-axis vectors; norm products floored at 1e-6."""
    norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return ((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1)


SPEC = MethodSpec(
    name="model_stock",
    kernel=model_stock,
    params=(ParamSpec("filter_wise", bool, "shared", False),),
    summary="Moves from the base toward the models' average by a ratio set by the angle between their task vectors.",
    paper="https://arxiv.org/abs/2403.19522",
    base="required",
    min_inputs=3,
)
