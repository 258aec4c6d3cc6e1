"""The TIES family's one pipeline: sparsify each task vector, elect signs, merge the weighted (agreeing) entries.

A family member (see ties_family.py) is a configuration of three steps:

1. a `Sparsifier` keeps some entries of each task vector (all of them, the largest magnitudes,
   a random draw, a breadcrumbs band, DELLA's MagPrune, or SCE's highest variance) and declares
   the parameters that tune it;
2. `consensus` merges only the entries agreeing with the elected sign (TIES), or all of them;
3. a weighting gives each task vector its weight and says how the sum is scaled:
   `RecipeWeights` (mergekit's generalized task arithmetic: `weight`, `lambda`, `normalize`,
   `rescale`) or `EnergyWeights` (SCE).

A member's parameters, and so their defaults, come from its steps only, and its kernel's
signature is built from them. `int8_mask` only saves memory in mergekit and changes nothing
here. The merge runs chunk by chunk in scratch rows, as `_primitives` explains.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mergehub import pages
from mergehub.methods._primitives import (
    Mask,
    Widened,
    chunk_slices,
    delta_magnitude,
    elect_signs_,
    energy_weights,
    flat_inputs,
    l1_rescale,
    magnitude_mask,
    magprune_mask,
    non_base,
    nonzero_divisor_,
    nonzero_total,
    outlier_mask,
    random_mask,
    rows_for,
    scratch,
    sum_agreeing_,
    sum_rows_,
    variance_mask,
    widen_dtype,
)
from mergehub.methods.spec import MethodSpec, ParamSpec

__all__ = [
    "BREADCRUMBS",
    "KEEP_ALL",
    "MAGNITUDE",
    "MAGPRUNE",
    "RANDOM",
    "VARIANCE",
    "EnergyWeights",
    "RecipeWeights",
    "Sparsifier",
    "task_vector_method",
]

DENSITY = ParamSpec("density", float, "non_base", 1.0)
WEIGHT = ParamSpec("weight", float, "non_base")
LAMBDA = ParamSpec("lambda", float, "shared", 1.0)
INT8_MASK = ParamSpec("int8_mask", bool, "shared", False)


@dataclass(frozen=True)
class TaskVectors:
    """One tensor's inputs as the steps see them: flat tensors widened chunk by chunk, and every parameter by its
    kernel argument.

    Per-model values leave out the base's, so they line up with `others`.
    """

    others: list[Widened]
    base: Widened
    shape: torch.Size
    values: Mapping[str, Any]
    generator: torch.Generator | None

    def per_model(self, *names: str) -> zip:
        """Each non-base tensor with its values of the per-model parameters `names`."""
        return zip(self.others, *(self.values[name] for name in names))


# Step 1: sparsify

MaskBuilder = Callable[[TaskVectors], list[Mask | None]]
"""One mask (None keeps all) per task vector."""


@dataclass(frozen=True)
class Sparsifier:
    """Which entries of each task vector a member keeps, and the parameters that tune it."""

    params: tuple[ParamSpec, ...]
    masks: MaskBuilder
    random: bool = False
    elementwise: bool = False
    """Nothing is pruned, so each output entry depends only on the same entry of the inputs."""
    ranks_magnitudes: bool = False
    """The masks rank `|task vector|`, which the merge has at hand: it passes them instead of having them recomputed."""


def _keep_all(v: TaskVectors) -> list[Mask | None]:
    return [None] * len(v.others)


def _largest(v: TaskVectors) -> list[Mask | None]:
    return [magnitude_mask(delta_magnitude(t, v.base), v.base, d) for t, d in v.per_model("density")]


def _random(v: TaskVectors) -> list[Mask | None]:
    return [random_mask(v.base, d, v.generator) for _, d in v.per_model("density")]


def _band(v: TaskVectors) -> list[Mask | None]:
    return [outlier_mask(delta_magnitude(t, v.base), v.base, d, g) for t, d, g in v.per_model("density", "gamma")]


def _magprune(v: TaskVectors) -> list[Mask | None]:
    base = v.base.stored.view(v.shape)
    return [
        magprune_mask(t.stored.view(v.shape), base, d, e, v.generator, v.base.dtype)
        for t, d, e in v.per_model("density", "epsilon")
    ]


def _most_varied(v: TaskVectors) -> list[Mask | None]:
    return [variance_mask(v.others, v.base, v.values["select_topk"])] * len(v.others)


KEEP_ALL = Sparsifier((DENSITY,), _keep_all, elementwise=True)
"""Nothing pruned; `density` is accepted for mergekit compatibility and changes nothing."""
MAGNITUDE = Sparsifier((DENSITY,), _largest, ranks_magnitudes=True)
"""TIES: keep exactly `max(1, int(density * numel))` largest magnitudes, equal ones ranked by position."""
RANDOM = Sparsifier((DENSITY,), _random, random=True)
"""DARE: keep each entry with probability `density`."""
BREADCRUMBS = Sparsifier((DENSITY, ParamSpec("gamma", float, "non_base", 0.01)), _band, ranks_magnitudes=True)
"""Drop the `gamma` largest magnitudes, then the smallest down to `density`.

As in mergekit 0.1.5, `int(gamma * numel) == 0` drops no outliers and `int(density * numel) == 0` keeps nothing.
"""
MAGPRUNE = Sparsifier((DENSITY, ParamSpec("epsilon", float, "non_base", 0.15)), _magprune, random=True)
"""DELLA: keep each entry with probability `density ± epsilon` by its magnitude's rank in its row."""
VARIANCE = Sparsifier((ParamSpec("select_topk", float, "shared", 1.0),), _most_varied)
"""SCE: keep, in every task vector, the `select_topk` fraction of entries whose values vary most across them."""


# Step 3: weigh and sum


@dataclass(frozen=True)
class Combination:
    """How one tensor's kept task vectors are weighted, summed and scaled."""

    weights: Sequence[float]
    factors: Sequence[float]
    """Each masked task vector's L1 rescale factor (1: not rescaled)."""
    weigh_votes: bool
    """Signs are elected from the weighted task vectors; else from the unweighted ones, weighted after."""
    normalize: bool
    divisor_floor: float | None
    """None: a sum of weights that is 0 up to rounding counts as 1; else sums are raised to this floor."""
    scale: float

    def divisor_(self, sums: torch.Tensor, spare: torch.Tensor) -> torch.Tensor:
        """The per-entry sums of agreeing weights, made safe to divide by (in place)."""
        if self.divisor_floor is None:
            return nonzero_divisor_(sums, self.weights, spare)
        return sums.clamp_(min=self.divisor_floor)

    def total(self) -> float:
        """The sum of all weights, made safe to divide by."""
        if self.divisor_floor is None:
            return nonzero_total(self.weights)
        return max(math.fsum(self.weights), self.divisor_floor)


@dataclass(frozen=True)
class RecipeWeights:
    """mergekit's generalized task arithmetic: the recipe's `weight` per model, times `lambda`.

    `rescale` restores each masked task vector's L1 norm (as mergekit does, not the DARE paper's
    1/density); `normalize` divides by the sum of the (agreeing) weights unless it is 0 up to
    rounding: unlike mergekit 0.1.5, weights that cancel (1.1, -0.7, -0.4) are not divided by
    their float32 residue (3e-8). The fields are the member's defaults of those two parameters.
    """

    normalize: bool
    rescale: bool
    elementwise: ClassVar[bool] = True

    def params(self, sparsify: tuple[ParamSpec, ...]) -> tuple[ParamSpec, ...]:
        """The member's parameters, in mergekit's order."""
        defaults = (
            ParamSpec("normalize", bool, "shared", self.normalize),
            ParamSpec("rescale", bool, "shared", self.rescale),
        )
        return (WEIGHT, *sparsify, LAMBDA, *defaults, INT8_MASK)

    def combination(self, v: TaskVectors, masks: list[Mask | None]) -> Combination:
        """The recipe's weights, and the L1 rescale factors of the masked task vectors when asked for."""
        rescale = v.values["rescale"]
        factors = [l1_rescale(t, v.base, m) if rescale and m is not None else 1.0 for t, m in zip(v.others, masks)]
        return Combination(
            weights=v.values["weight"],
            factors=factors,
            weigh_votes=True,
            normalize=v.values["normalize"],
            divisor_floor=None,
            scale=v.values["lambda_"],
        )


@dataclass(frozen=True)
class EnergyWeights:
    """SCE: each kept task vector weighted by its mean square; signs elected before weighting; always normalized."""

    elementwise: ClassVar[bool] = False

    def params(self, sparsify: tuple[ParamSpec, ...]) -> tuple[ParamSpec, ...]:
        """The member's parameters, in mergekit's order."""
        return (*sparsify, INT8_MASK)

    def combination(self, v: TaskVectors, masks: list[Mask | None]) -> Combination:
        """Energy weights, divisors floored at 1e-6 as in mergekit."""
        weights = energy_weights(v.others, v.base, masks)
        return Combination(
            weights, [1.0] * len(weights), weigh_votes=False, normalize=True, divisor_floor=1e-6, scale=1
        )


Weighting = RecipeWeights | EnergyWeights


# The pipeline


class _Pipeline:
    """One member's kernel, `(tensors, *, base_index, <its parameters>[, generator])`, checked as a function is."""

    def __init__(
        self, name: str, sparsify: Sparsifier, consensus: bool, weighting: Weighting, params: tuple[ParamSpec, ...]
    ) -> None:
        self.name, self.sparsify, self.consensus, self.weighting = name, sparsify, consensus, weighting
        self.params = params
        keywords = ["base_index", *(p.argument for p in params)] + (["generator"] if sparsify.random else [])
        self.__signature__ = inspect.Signature(
            [inspect.Parameter("tensors", inspect.Parameter.POSITIONAL_ONLY)]
            + [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY) for k in keywords]
            + [inspect.Parameter("out_dtype", inspect.Parameter.KEYWORD_ONLY, default=None)]
        )

    def __repr__(self) -> str:
        return f"<{self.name} kernel: the TIES pipeline>"

    def __call__(self, tensors: Sequence[torch.Tensor], /, **arguments: Any) -> torch.Tensor:
        self.__signature__.bind(tensors, **arguments)  # a missing or unexpected argument raises TypeError
        per_model = {p.argument: arguments[p.argument] for p in self.params if p.scope != "shared"}
        flat, base_index = flat_inputs(self.name, tensors, arguments["base_index"], **per_model)
        wide = [Widened(t, widen_dtype(tensors)) for t in flat]
        base, others = wide[base_index], non_base(wide, base_index)
        shape = tensors[base_index].shape
        out_dtype = arguments.get("out_dtype") or base.dtype
        if not others or base.numel() == 0:
            return tensors[base_index].to(out_dtype, copy=True)
        values = {
            p.argument: arguments[p.argument] if p.scope == "shared" else non_base(arguments[p.argument], base_index)
            for p in self.params
        }
        steps = TaskVectors(others, base, shape, values, arguments.get("generator"))
        masks = self.sparsify.masks(steps)
        combination = self.weighting.combination(steps, masks)
        merge = _Merge(base, others, masks, combination, self.consensus, self.sparsify.ranks_magnitudes)
        return merge.run(out_dtype).view(shape)


@dataclass(frozen=True)
class _Merge:
    """Steps 2 and 3 on flat tensors: the merged task vectors added to the base.

    Each task vector is masked, rescaled and weighted in mergekit's order; with `consensus`
    only entries agreeing with the elected sign are summed; the sum is divided by the
    (agreeing) weights when normalized, then scaled. Each chunk of each input is widened once.
    """

    base: Widened
    others: list[Widened]
    masks: list[Mask | None]
    combination: Combination
    consensus: bool
    scored: bool
    """The masks rank the task vectors' magnitudes, so they are given them."""

    def run(self, out_dtype: torch.dtype) -> torch.Tensor:
        """The merged flat tensor, in `out_dtype`."""
        base, count = self.base, len(self.others)
        work = scratch(count + 4, base)
        out = pages.empty(base.numel(), dtype=out_dtype, device=base.device)
        for positions in chunk_slices(base.numel(), base.device):
            rows = rows_for(work, positions)
            b = base.into(positions, rows[count])
            out[positions] = self._mixed(positions, rows[:count], b, rows[count + 1 :]).add_(b)
        return out

    def _mixed(self, positions: slice, deltas: torch.Tensor, b: torch.Tensor, spare: torch.Tensor) -> torch.Tensor:
        """The chunk's merged task vector, computed in `deltas` and the three `spare` rows."""
        c, consensus = self.combination, self.consensus
        weigh_first = c.weigh_votes or not consensus
        last = keep = None
        for delta, tensor, mask, factor, weight in zip(deltas, self.others, self.masks, c.factors, c.weights):
            tensor.into(positions, delta).sub_(b)
            if mask is not None:
                if mask is not last:  # SCE's mask, shared by every task vector, is computed once per chunk
                    if self.scored:
                        torch.abs(delta, out=spare[0])
                    keep, last = mask(positions, spare[:2], scored=self.scored), mask
                delta.mul_(keep)
                if factor != 1:
                    delta.mul_(factor)
            if weigh_first:
                delta.mul_(weight)
        if consensus:
            direction = elect_signs_(deltas, spare[0])
            if not weigh_first:
                for delta, weight in zip(deltas, c.weights):
                    delta.mul_(weight)
            mixed = sum_agreeing_(deltas, c.weights, direction, spare[1] if c.normalize else None, spare[2])
            divisor = c.divisor_(spare[1], spare[2]) if c.normalize else 1.0
        else:
            mixed, divisor = sum_rows_(deltas), c.total()
        if c.normalize:
            mixed.div_(divisor)
        if c.scale != 1:
            mixed.mul_(c.scale)
        return mixed


def task_vector_method(
    name: str, *, sparsify: Sparsifier, consensus: bool, weighting: Weighting, summary: str, paper: str
) -> MethodSpec:
    """A member of the TIES family: its three steps, and what the method table says of it."""
    params = weighting.params(sparsify.params)
    return MethodSpec(
        name=name,
        kernel=_Pipeline(name, sparsify, consensus, weighting, params),
        params=params,
        summary=summary,
        paper=paper,
        base="required",
        random=sparsify.random,
        elementwise=sparsify.elementwise and weighting.elementwise,
        widens=True,
    )
