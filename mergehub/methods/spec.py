"""What a merge method declares beside its kernel: its parameters, their defaults, and its input contract.

Method modules import this module, never the registry, so the registry can import them all.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mergehub.errors import MergeMethodError

__all__ = ["REQUIRED", "Kernel", "MethodSpec", "ParamSpec"]

REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()
"""Sentinel default of a parameter the recipe must set."""

ParamScope = Literal["shared", "input", "non_base"]
BasePolicy = Literal["required", "optional", "ignored"]
Kernel = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class ParamSpec:
    """One recipe parameter: its type, whether it is per input model, and its default (written only here).

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

    def default_for(self, count: int, base_index: int | None) -> Any:
        """The default as a kernel receives it for `count` inputs: per-model defaults once per input, None at the
        base."""
        if self.scope == "shared":
            return self.default
        return tuple(None if self.scope == "non_base" and i == base_index else self.default for i in range(count))


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: its kernel, parameters and input contract.

    The kernel is called as `kernel(tensors, base_index=..., **params)` with float tensors of
    one shape and every parameter resolved (kernels declare no defaults: the `ParamSpec`s hold
    them); shared parameters are scalars and per-input parameters are tuples aligned with
    `tensors`. Kernels with `random=True` also get `generator`. Kernels never modify their inputs.
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
    widens: bool = False
    """The kernel takes float inputs in their stored dtypes and widens them chunk by chunk (to float32, or float64
    if an input is), so its caller makes no whole widened copies; it writes its result in `out_dtype` when given."""
    stacks_layers: bool = False

    def param(self, name: str) -> ParamSpec | None:
        """The spec of parameter `name`, or None when the method has no such parameter."""
        return next((p for p in self.params if p.name == name), None)

    def merge(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        base_index: int | None = None,
        generator: torch.Generator | None = None,
        **arguments: Any,
    ) -> torch.Tensor:
        """Merge `tensors` with the given parameters and the defaults of the others, as the planner resolves them.

        `arguments` are keyed as the kernel's (`lambda_`); per-model values are tuples aligned with `tensors`.

        Raises:
            MergeMethodError: a required parameter is missing.
            TypeError: a random method got no `generator`.
        """
        for param in self.params:
            if param.argument in arguments:
                continue
            if param.required:
                raise MergeMethodError(
                    f"{self.name} needs `{param.name}`.", hint=f"Pass {param.argument}= to {self.name}."
                )
            arguments[param.argument] = param.default_for(len(tensors), base_index)
        if self.random:
            if generator is None:
                raise TypeError(f"{self.name} draws random numbers: pass generator=torch.Generator().")
            arguments["generator"] = generator
        return self.kernel(tensors, base_index=base_index, **arguments)
