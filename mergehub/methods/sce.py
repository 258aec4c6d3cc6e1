"""SCE: select the entries where the models vary most, weight each task vector by its energy, erase sign conflicts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods._primitives import (
    Mask,
    Positions,
    chunk_slices,
    drop_all,
    elect_signs_,
    flat_inputs,
    materialize,
    non_base,
    rank_band_mask,
    rows_for,
    scratch,
    sum_agreeing_,
)
from mergehub.methods.registry import MethodSpec, ParamSpec


def sce(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    select_topk: float = 1.0,
    int8_mask: bool = False,
) -> torch.Tensor:
    """Keep the `select_topk` fraction of entries with the largest variance across task vectors, then merge.

    Each task vector is weighted by its mean square (uniformly when all are ~0), entries
    disagreeing with the elected sign are erased, and the rest are averaged by weight.
    `int8_mask` only saves memory in mergekit and changes nothing here.
    """
    flat, base_index = flat_inputs("sce", tensors, base_index)
    base = flat[base_index]
    others = non_base(flat, base_index)
    if not others or base.numel() == 0:
        return tensors[base_index].clone()
    mask = _variance_mask(others, base, select_topk)
    weights = _energy_weights(others, base, mask)
    work = scratch(len(others) + 3, base)
    out = torch.empty_like(base)
    for positions in chunk_slices(base.numel(), base.device):
        rows = rows_for(work, positions)
        vectors, spare = rows[: len(others)], rows[len(others) :]
        b = base[positions]
        for vector, tensor in zip(vectors, others):
            torch.sub(tensor[positions], b, out=vector)
        if mask is not None:
            vectors.mul_(mask(positions, spare[:2]))
        direction = elect_signs_(vectors, spare[0])
        for vector, weight in zip(vectors, weights):
            vector.mul_(weight)
        mixed = sum_agreeing_(vectors, weights, direction, spare[1], spare[2])
        torch.add(mixed.div_(spare[1].clamp_(min=1e-6)), b, out=out[positions])
    return out.view(tensors[base_index].shape)


def population_variance(vectors: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise variance (divided by n) of `vectors`, accumulated in float64 as `torch.var` does.

    `torch.var` across inputs runs a scalar loop per entry; these float64 elementwise passes
    give the same values in the inputs' dtype many times faster.
    """
    wide = [v.double() for v in vectors]
    mean = wide[0].clone()
    for vector in wide[1:]:
        mean.add_(vector)
    mean.div_(len(wide))
    spread = torch.zeros_like(mean)
    for vector in wide:
        spread.add_(vector.sub_(mean).square_())
    spread.div_(len(wide))
    return spread.to(vectors[0].dtype) if out is None else out.copy_(spread)


def _variance_mask(others: Sequence[torch.Tensor], base: torch.Tensor, select_topk: float) -> Mask | None:
    """Keep the `int(nonzero * select_topk)` positions whose task-vector variance is largest (None keeps all)."""
    if select_topk >= 1:
        return None
    if select_topk <= 0:
        return drop_all

    def variance(positions: Positions, out: torch.Tensor | None = None) -> torch.Tensor:
        return population_variance([t[positions] - base[positions] for t in others], out)

    work = scratch(1, base)
    nonzero = sum(
        int(torch.count_nonzero(variance(p, rows_for(work, p)[0]))) for p in chunk_slices(base.numel(), base.device)
    )
    kept = int(torch.tensor(nonzero) * select_topk)  # a float32 product, as in mergekit
    mask = rank_band_mask(variance, base, base.numel() - kept, base.numel())
    return None if mask is None else materialize(mask, base)


def _energy_weights(others: Sequence[torch.Tensor], base: torch.Tensor, mask: Mask | None) -> list[float]:
    """Each (masked) task vector's mean square, divided by their sum; uniform when that sum is below 1e-6."""
    work = scratch(3, base)
    energies = []
    for tensor in others:
        total = 0.0
        for positions in chunk_slices(base.numel(), base.device):
            rows = rows_for(work, positions)
            vector = torch.sub(tensor[positions], base[positions], out=rows[0])
            if mask is not None:
                vector.mul_(mask(positions, rows[1:]))
            total += vector.square_().sum(dtype=torch.float64).item()
        energies.append(total / base.numel())
    norm = sum(energies)
    if abs(norm) < 1e-6:
        return [1 / len(others)] * len(others)
    return [e / norm for e in energies]


SPEC = MethodSpec(
    name="sce",
    kernel=sce,
    params=(
        ParamSpec("select_topk", float, "shared", 1.0),
        ParamSpec("int8_mask", bool, "shared", False),
    ),
    summary="Keeps the highest-variance entries, weights task vectors by energy, and erases sign conflicts.",
    paper="https://arxiv.org/abs/2408.07990",
    base="required",
)
