"""Arcee Fusion: take the other model's value only where it changes the output distribution most."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods._primitives import check_same_shape
from mergehub.methods._spherical import base_and_other
from mergehub.methods.spec import MethodSpec

QUANTILE_SAMPLE_SIZE = 1_000_000
"""Importance scores beyond this many are subsampled (with replacement) to estimate quantiles."""


def arcee_fusion(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Replace base parameters by the other model's where importance >= median + 1.5 * IQR.

    Importance is `|other - base|` times the KL divergence between the softmaxes of the
    two tensors' last-axis rows. Quantiles of more than 1M scores are estimated from 1M
    of them drawn with `generator`.
    """
    check_same_shape(tensors)
    base, other = base_and_other(tensors, base_index, "arcee_fusion")
    scores = _importance(other, base)
    return base + (other - base) * (scores >= _outlier_threshold(scores, generator))


def _importance(params: torch.Tensor, base: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`|params - base|` weighted by KL(softmax(params) || softmax(base)) of each last-axis row."""
    p = torch.softmax(params, dim=-1) + eps
    q = torch.softmax(base, dim=-1) + eps
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    return (params - base).abs() * kl


def _outlier_threshold(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Median + 1.5 * interquartile range of `scores`, quantiles taken as lower order statistics."""
    flat = scores.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE_SIZE:
        picks = torch.randint(flat.numel(), (QUANTILE_SAMPLE_SIZE,), generator=generator, device=generator.device)
        flat = flat[picks.to(flat.device)]
    ordered = torch.sort(flat).values
    last = ordered.numel() - 1
    q1, median, q3 = ordered[last // 4], ordered[last // 2], ordered[3 * last // 4]
    return median + 1.5 * (q3 - q1)


SPEC = MethodSpec(
    name="arcee_fusion",
    kernel=arcee_fusion,
    params=(),
    summary="Keeps the base except where the other model's parameters change the row's softmax distribution most.",
    paper="https://arcee.ai",
    base="required",
    min_inputs=2,
    max_inputs=2,
    random=True,
)
