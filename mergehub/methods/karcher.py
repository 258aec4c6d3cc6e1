"""Karcher mean: the Riemannian centre of mass of the models' directions on the hypersphere."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods._primitives import check_same_shape
from mergehub.methods._spherical import exp_map
from mergehub.methods.spec import MethodSpec, ParamSpec


def karcher(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    max_iter: int,
    tol: float,
) -> torch.Tensor:
    """The equal-weight Karcher mean of the inputs' unit directions, scaled by their mean norm.

    Inputs with norm at most `tol` have no direction and are left out of the mean (but
    not of the mean norm); if every input is that small, the result is zero.
    """
    check_same_shape(tensors)
    if len(tensors) == 1:
        return tensors[0].clone()
    norms = [torch.linalg.vector_norm(x) for x in tensors]
    units = [x / n for x, n in zip(tensors, norms, strict=True) if n.item() > tol]
    if not units:
        return torch.zeros_like(tensors[0])
    alpha = 1 / len(tensors)
    scale = sum(alpha * n for n in norms)
    return scale * _spherical_mean(units, max_iter, tol)


def _spherical_mean(units: Sequence[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    """Equal-weight Karcher mean of unit tensors by at most `max_iter` gradient steps on the sphere.

    Starts at the normalised arithmetic mean (the first unit if that vanishes) and stops
    once the mean tangent step is shorter than `tol`.
    """
    alpha = 1 / len(units)
    mean = torch.zeros_like(units[0])
    for unit in units:
        mean += alpha * unit
    mean_norm = torch.linalg.vector_norm(mean)
    mean = units[0].clone() if mean_norm.item() < tol else mean / mean_norm
    for _ in range(max_iter):
        step = torch.zeros_like(mean)
        for unit in units:
            cos = torch.dot(mean.flatten(), unit.flatten()).clamp(-1, 1)
            theta = torch.arccos(cos)
            if theta.item() >= tol:
                step += alpha * (theta / torch.sin(theta)) * (unit - cos * mean)
        length = torch.linalg.vector_norm(step)
        if length.item() < tol:
            break
        mean = exp_map(mean, step, length)
        mean_norm = torch.linalg.vector_norm(mean)
        if mean_norm.item() > tol:
            mean = mean / mean_norm
    return mean


SPEC = MethodSpec(
    name="karcher",
    kernel=karcher,
    params=(
        ParamSpec("max_iter", int, "shared", 10),
        ParamSpec("tol", float, "shared", 1e-5),
    ),
    summary="Riemannian (Karcher) mean of the models' directions on the hypersphere, scaled by their mean norm.",
    paper="https://arxiv.org/abs/2603.04972",
)
