"""SLERP: spherical linear interpolation between a base model and one other model."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mergehub import pages
from mergehub.methods._primitives import check_same_shape, chunk_slices, rows_for, scratch, widen_dtype
from mergehub.methods._spherical import base_and_other
from mergehub.methods.spec import MethodSpec, ParamSpec

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    t: float,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Interpolate from the base (t=0) to the other model (t=1) along the great circle.

    The angle comes from the whole tensors' normalised dot product, summed chunk by chunk (float32 chunks,
    float64 total) as is the result, so no input is ever widened whole; nearly colinear
    pairs (|dot| > 0.9995) fall back to linear interpolation, and so do tensors whose angle
    cannot be computed (NaN or Inf values): those values stay where they are, for the merge to report.
    The result is in `out_dtype` (default: the float32 or float64 it is computed in).
    """
    check_same_shape(tensors)
    v0, v1 = (t.reshape(-1) for t in base_and_other(tensors, base_index, "slerp"))
    work = scratch(2, v0, widen_dtype(tensors))
    chunks = chunk_slices(v0.numel(), v0.device)
    square0 = square1 = product = 0.0  # sums of the chunks' float32 dot products, in float64
    for positions in chunks:
        a, b = _widened(work, positions, v0, v1)
        square0 += torch.dot(a, a).item()
        square1 += torch.dot(b, b).item()
        product += torch.dot(a, b).item()
    n0, n1 = math.sqrt(square0), math.sqrt(square1)
    d0 = n0 if n0 > EPS else 1.0
    d1 = n1 if n1 > EPS else 1.0
    dot = product / (d0 * d1)
    if not math.isfinite(dot) or abs(dot) > DOT_THRESHOLD:
        s0, s1 = 1 - t, t
    else:
        theta = math.acos(max(-1.0, min(1.0, dot)))
        s0 = math.sin((1 - t) * theta) / math.sin(theta)
        s1 = math.sin(t * theta) / math.sin(theta)
    result = pages.empty(tensors[0].shape, dtype=out_dtype or work.dtype, device=v0.device)
    flat = result.view(-1)
    for positions in chunks:
        a, b = _widened(work, positions, v0, v1)
        torch.add(a.mul_(s0), b, alpha=s1, out=flat[positions])
    return result


def _widened(
    work: torch.Tensor, positions: slice, v0: torch.Tensor, v1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk `positions` of both flat inputs, widened into the scratch rows `work`."""
    a, b = rows_for(work, positions)
    return a.copy_(v0[positions]), b.copy_(v1[positions])


SPEC = MethodSpec(
    name="slerp",
    kernel=slerp,
    params=(ParamSpec("t", float, "shared"),),
    summary="Spherical interpolation between the base and one other model, by t.",
    paper="https://en.wikipedia.org/wiki/Slerp",
    base="required",
    min_inputs=2,
    max_inputs=2,
    widens=True,
)
