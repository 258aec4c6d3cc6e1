"""LoRA extraction: the low-rank factors B·A of a fine-tune's weight delta, by truncated SVD, and plain deltas.

These are kernels of extraction jobs, not recipe merge methods: the registry lists them apart (`get_kernel`).
They return named outputs (`A`, `B`, `delta`) and measures (`rank`, `relative_error`, `energy`) instead of one tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods.spec import MethodSpec, ParamSpec

__all__ = ["EXTRACT_SPEC", "DIFFERENCE_SPEC", "extract_lora", "difference", "choose_rank", "RANDOMIZED_OVERSAMPLING"]

RANDOMIZED_OVERSAMPLING = 8
"""Extra directions the randomized SVD computes beyond the largest rank it may keep."""
RANDOMIZED_ITERATIONS = 4
"""Power iterations of the randomized SVD (`torch.svd_lowrank`'s `niter`)."""


def choose_rank(
    singular: torch.Tensor, total_energy: float, *, rank: int, rank_energy: float | None, sv_epsilon: float
) -> int:
    """The rank kept: at most `rank`; with `rank_energy`, the smallest keeping that fraction of the delta's squared
    Frobenius norm (`total_energy`); with `sv_epsilon`, no singular value at or below it; at least 1."""
    keep = min(rank, singular.numel())
    if rank_energy is not None and total_energy > 0:
        kept = torch.cumsum(singular.double() ** 2, 0) / total_energy
        keep = min(keep, int(torch.searchsorted(kept, torch.tensor(rank_energy - 1e-12, dtype=kept.dtype)).item()) + 1)
    if sv_epsilon > 0:
        keep = min(keep, int((singular > sv_epsilon).sum().item()))
    return max(keep, 1)


def extract_lora(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    rank: int,
    rank_energy: float | None,
    sv_epsilon: float,
    distribute_scale: bool,
    transpose: bool,
    svd: str,
    dtype: str,
) -> dict[str, torch.Tensor | float]:
    """Factor the delta `tensors[1] - tensors[0]` (fine-tune minus base) as B·A of a small rank.

    The delta is transposed first for an embedding (peft's lora_embedding_A/B). With `distribute_scale` the
    singular values are split as their square roots between A and B (`A = √S·Vᵀ`, `B = U·√S`), else A carries them
    (`A = S·Vᵀ`, `B = U`), as mergekit-extract-lora does. `svd` is `exact` (`torch.linalg.svd`, mergekit's) or
    `randomized` (`torch.svd_lowrank` with a few power iterations: faster on large matrices, slightly worse
    factors). `relative_error` is ‖delta − B·A‖_F / ‖delta‖_F of the factors rounded to `dtype`, as written.
    """
    base = tensors[0 if base_index is None else base_index]
    delta = tensors[1 - (base_index or 0)].float() - base.float()
    if transpose:
        delta = delta.T
    total = float((delta.double() ** 2).sum())
    if svd == "randomized":
        width = min(rank + RANDOMIZED_OVERSAMPLING, *delta.shape)
        u, s, v = torch.svd_lowrank(delta, q=width, niter=RANDOMIZED_ITERATIONS)
        vh = v.T
    else:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    keep = choose_rank(s, total, rank=rank, rank_energy=rank_energy, sv_epsilon=sv_epsilon)
    u, s, vh = u[:, :keep], s[:keep], vh[:keep]
    if distribute_scale:
        root = s.sqrt()
        a, b = root[:, None] * vh, u * root[None, :]
    else:
        a, b = s[:, None] * vh, u
    out = getattr(torch, dtype)
    a, b = a.to(out), b.to(out)
    residual = float(((delta - b.float() @ a.float()).double() ** 2).sum())
    return {
        "A": a,
        "B": b,
        "rank": float(keep),
        "relative_error": (residual / total) ** 0.5 if total > 0 else 0.0,
        "energy": float((s.double() ** 2).sum()) / total if total > 0 else 1.0,
    }


def difference(tensors: Sequence[torch.Tensor], *, base_index: int | None) -> dict[str, torch.Tensor | float]:
    """The plain delta `tensors[1] - tensors[0]` (a bias of a LoRA module, kept as `lora_B.bias`)."""
    base = tensors[0 if base_index is None else base_index]
    return {"delta": tensors[1 - (base_index or 0)].float() - base.float()}


EXTRACT_SPEC = MethodSpec(
    name="extract_lora",
    kernel=extract_lora,
    params=(
        ParamSpec("rank", int),
        ParamSpec("rank_energy", float, default=None),
        ParamSpec("sv_epsilon", float, default=0.0),
        ParamSpec("distribute_scale", bool, default=True),
        ParamSpec("transpose", bool, default=False),
        ParamSpec("svd", str, default="exact"),
        ParamSpec("dtype", str, default="float32"),
    ),
    summary="A LoRA adapter's factors B·A of a fine-tune's weight delta, by truncated SVD (mergekit-extract-lora).",
    base="required",
    min_inputs=2,
    max_inputs=2,
)
DIFFERENCE_SPEC = MethodSpec(
    name="difference",
    kernel=difference,
    params=(),
    summary="A fine-tune's tensor minus the base's.",
    base="required",
    min_inputs=2,
    max_inputs=2,
)
