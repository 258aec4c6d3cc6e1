"""SLERP: spherical linear interpolation between a base model and one other model."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mergehub.methods._primitives import check_same_shape
from mergehub.methods._spherical import base_and_other
from mergehub.methods.spec import MethodSpec, ParamSpec

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    t: float,
) -> torch.Tensor:
    """Interpolate from the base (t=0) to the other model (t=1) along the great circle.

    The angle comes from the whole tensors' normalised dot product; nearly colinear
    pairs (|dot| > 0.9995) fall back to linear interpolation, and so do tensors whose angle
    cannot be computed (NaN or Inf values): those values stay where they are, for the merge to report.
    """
    check_same_shape(tensors)
    v0, v1 = base_and_other(tensors, base_index, "slerp")
    n0, n1 = torch.linalg.vector_norm(v0).item(), torch.linalg.vector_norm(v1).item()
    d0 = n0 if n0 > EPS else 1.0
    d1 = n1 if n1 > EPS else 1.0
    dot = torch.dot(v0.reshape(-1), v1.reshape(-1)).item() / (d0 * d1)  # no normalised copies: memory stays flat
    if not math.isfinite(dot) or abs(dot) > DOT_THRESHOLD:
        s0, s1 = 1 - t, t
    else:
        theta = math.acos(max(-1.0, min(1.0, dot)))
        s0 = math.sin((1 - t) * theta) / math.sin(theta)
        s1 = math.sin(t * theta) / math.sin(theta)
    result = v0 * s0
    return result.add_(v1, alpha=s1)


SPEC = MethodSpec(
    name="slerp",
    kernel=slerp,
    params=(ParamSpec("t", float, "shared"),),
    summary="Spherical interpolation between the base and one other model, by t.",
    paper="https://en.wikipedia.org/wiki/Slerp",
    base="required",
    min_inputs=2,
    max_inputs=2,
)
