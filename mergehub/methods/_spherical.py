"""Hypersphere math and input checks shared by the spherical and base-relative merge methods."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.errors import MergeMethodError
from mergehub.methods._primitives import lerp


def normalize(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """`x` scaled to unit norm along its last axis; norms below `eps` count as `eps`."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=eps)


def slerp_rows(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of each last-axis vector of `v0` (t=0) toward `v1` (t=1).

    Vectors whose angle has `1 - cos^2 <= eps^2` (colinear or antipodal) are interpolated linearly.
    """
    cos = (normalize(v0) * normalize(v1)).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    return torch.where(colinear, lerp(t, v0, v1), spherical)


def exp_map(point: torch.Tensor, tangent: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Follow the great circle from unit `point` along `tangent`, whose norm is `length`."""
    return point * torch.cos(length) + tangent * (torch.sin(length) / length)


def base_and_other(
    tensors: Sequence[torch.Tensor], base_index: int | None, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The base tensor and the single other tensor of a two-model method.

    Raises:
        MergeMethodError: there is no base, or not exactly two inputs.
    """
    if base_index is None or len(tensors) != 2:
        raise MergeMethodError(
            f"{method} merges a base model with exactly one other model; got {len(tensors)} "
            f"input(s) {'without' if base_index is None else 'with'} a base.",
            hint="Set `base_model` and list exactly one other model.",
        )
    return tensors[base_index], tensors[1 - base_index]
