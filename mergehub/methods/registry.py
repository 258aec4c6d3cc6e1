"""The table of merge methods, keyed by their mergekit names, with each method's parameter spec."""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from mergehub.errors import UnknownMethodError

__all__ = ["REQUIRED", "ParamSpec", "MethodSpec", "get_method", "method_names", "all_methods"]

REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()
"""Sentinel default of a parameter the recipe must set."""

ParamScope = Literal["shared", "input", "non_base"]
BasePolicy = Literal["required", "optional", "ignored"]
Kernel = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class ParamSpec:
    """One recipe parameter: its type, whether it is per input model, and its default.

    `scope` is "shared" (one value per tensor), "input" (one per input model), or
    "non_base" (one per input model except the base, which receives None).
    """

    name: str
    type: type
    scope: ParamScope = "shared"
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        """Whether the recipe must give a value."""
        return self.default is REQUIRED

    @property
    def argument(self) -> str:
        """The kernel's keyword for this parameter (`lambda` becomes `lambda_`)."""
        return self.name + "_" if keyword.iskeyword(self.name) else self.name


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: its kernel, parameters and input contract.

    The kernel is called as `kernel(tensors, base_index=..., **params)` with float
    tensors of one shape; shared parameters are scalars and per-input parameters are
    tuples aligned with `tensors`. Kernels with `random=True` also get `generator`.
    Kernels never modify their inputs.
    """

    name: str
    kernel: Kernel
    params: tuple[ParamSpec, ...]
    summary: str
    paper: str | None = None
    base: BasePolicy = "ignored"
    min_inputs: int = 1
    max_inputs: int | None = None
    min_non_base: int = 0
    max_non_base: int | None = None
    random: bool = False
    elementwise: bool = False
    """Each output element depends only on the same element of the inputs, so tensors may be merged in chunks."""
    stacks_layers: bool = False

    def param(self, name: str) -> ParamSpec | None:
        """The spec of parameter `name`, or None when the method has no such parameter."""
        return next((p for p in self.params if p.name == name), None)


def _builtin_methods() -> dict[str, MethodSpec]:
    from mergehub.methods import linear, passthrough, slerp, task_arithmetic
    from mergehub.methods import breadcrumbs, dare, della, sce, ties
    from mergehub.methods import arcee_fusion, karcher, model_stock, multislerp, nearswap, nuslerp, ram

    specs = (linear.SPEC, slerp.SPEC, task_arithmetic.SPEC, passthrough.SPEC)
    specs += (
        model_stock.SPEC,
        nuslerp.SPEC,
        multislerp.SPEC,
        karcher.SPEC,
        nearswap.SPEC,
        arcee_fusion.SPEC,
        ram.SPEC,
        ram.PLUS_TL_SPEC,
    )
    specs += (
        ties.SPEC,
        dare.SPEC,
        dare.LINEAR_SPEC,
        breadcrumbs.SPEC,
        breadcrumbs.TIES_SPEC,
        della.SPEC,
        della.LINEAR_SPEC,
        sce.SPEC,
    )
    return {spec.name: spec for spec in specs}


def all_methods() -> dict[str, MethodSpec]:
    """Every registered method by name."""
    return _builtin_methods()


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(all_methods())


def get_method(name: str) -> MethodSpec:
    """The method registered as `name`; an unknown name lists the valid ones."""
    methods = all_methods()
    if name not in methods:
        raise UnknownMethodError(
            f"Unknown merge_method {name!r}.",
            hint=f"Use one of: {', '.join(sorted(methods))}.",
        )
    return methods[name]
