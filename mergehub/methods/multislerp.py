"""Multi-SLERP: weighted barycentric interpolation of any number of models on the hypersphere."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.errors import MergeMethodError
from mergehub.methods._primitives import check_same_shape, non_base
from mergehub.methods._spherical import exp_map
from mergehub.methods.spec import MethodSpec, ParamSpec


def multislerp(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float | None],
    normalize_weights: bool,
    eps: float,
) -> torch.Tensor:
    """Interpolate the non-base models' directions in the tangent space at their weighted mean direction.

    Each model (minus the base, when there is one) is scaled to unit norm; the weighted
    tangent vectors at the normalised weighted mean are summed and mapped back to the
    sphere, then scaled by the weighted mean of the norms. If the weighted mean direction
    vanishes, two models are averaged linearly.

    Raises:
        MergeMethodError: no non-base model; weights summing to 0 with `normalize_weights`;
            or three or more models whose weighted directions cancel out.
    """
    check_same_shape(tensors)
    models = list(tensors) if base_index is None else non_base(tensors, base_index)
    weights = list(weight) if base_index is None else non_base(weight, base_index)
    if not models:
        raise MergeMethodError("multislerp got no model besides the base.", hint="List at least one non-base model.")
    if len(models) == 1:
        return models[0].clone()
    if normalize_weights and sum(weights) == 0:
        raise MergeMethodError(
            f"multislerp: the weights {weights} sum to 0, so they cannot be normalized.",
            hint="Give weights with a non-zero sum, or set `normalize_weights: false`.",
        )
    base = None if base_index is None else tensors[base_index]
    points = torch.stack(models).reshape(len(models), -1)
    if base is not None:
        points = points - base.reshape(1, -1)
    w = torch.tensor(weights, dtype=points.dtype, device=points.device)
    if normalize_weights:
        w = w / w.sum()
    merged = _barycentre(points, w.unsqueeze(-1), eps).reshape(tensors[0].shape)
    return merged if base is None else merged + base


def _barycentre(points: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The weighted spherical mean of the rows of `points`, scaled by their weighted mean norm."""
    norms = torch.linalg.vector_norm(points, dim=-1, keepdim=True)
    units = points / (norms + eps)
    mean = (units * w).sum(dim=0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm.item() < eps:
        if len(points) != 2:
            raise MergeMethodError(
                "multislerp: the weighted directions of the models cancel out (e.g. a and -a with equal weights).",
                hint="Change the weights of the opposing models.",
            )
        return points[0] * w[0] + points[1] * w[1]
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(dim=-1, keepdim=True) * mean
    step = (tangents * w).sum(dim=0)
    return exp_map(mean, step, torch.linalg.vector_norm(step) + eps) * (norms * w).sum()


SPEC = MethodSpec(
    name="multislerp",
    kernel=multislerp,
    params=(
        ParamSpec("weight", float, "non_base"),
        ParamSpec("normalize_weights", bool, "shared", True),
        ParamSpec("eps", float, "shared", 1e-8),
    ),
    summary="Weighted spherical interpolation of any number of models, optionally of their task vectors around a base.",
    paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    base="optional",
    min_inputs=1,
    min_non_base=1,
)
