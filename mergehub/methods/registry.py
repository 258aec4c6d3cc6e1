"""The table of merge methods, keyed by their mergekit names, built once when this module is imported.

Each method module declares its kernel and its `MethodSpec` side by side and imports only
`spec`; this module imports them all, so there is no import cycle and no registration by
side effect. The kernels of other jobs (LoRA extraction) are kept apart: a recipe cannot name
them, the executor finds them with `get_kernel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from mergehub.errors import UnknownMethodError, excerpt
from mergehub.methods import (
    arcee_fusion,
    extract,
    karcher,
    linear,
    model_stock,
    moe,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    ram,
    slerp,
    ties_family,
)
from mergehub.methods.spec import MethodSpec

__all__ = ["all_methods", "get_method", "get_kernel", "method_names"]

_SPECS = (
    linear.SPEC,
    slerp.SPEC,
    passthrough.SPEC,
    *ties_family.SPECS,
    model_stock.SPEC,
    nuslerp.SPEC,
    multislerp.SPEC,
    karcher.SPEC,
    nearswap.SPEC,
    arcee_fusion.SPEC,
    ram.SPEC,
    ram.PLUS_TL_SPEC,
)
_METHODS: Mapping[str, MethodSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
_NAMES = tuple(sorted(_METHODS))
_KERNELS: Mapping[str, MethodSpec] = MappingProxyType(
    {
        **_METHODS,
        **{s.name: s for s in (extract.EXTRACT_SPEC, extract.DIFFERENCE_SPEC, moe.EXPERT_SPEC, moe.ZEROS_SPEC)},
    }
)


def all_methods() -> Mapping[str, MethodSpec]:
    """Every registered method by name (a read-only mapping, the same object on every call)."""
    return _METHODS


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return list(_NAMES)


def get_method(name: str) -> MethodSpec:
    """The method registered as `name`; an unknown name lists the valid ones.

    Raises:
        UnknownMethodError: no method has that name.
    """
    return _lookup(_METHODS, name, "merge_method", "Use one of")


def get_kernel(name: str) -> MethodSpec:
    """The spec of any job's kernel: a merge method, or an extraction kernel (`extract_lora`, `difference`)
    or an MoE assembly kernel (`moe_expert`, `zeros`).

    Raises:
        UnknownMethodError: no kernel has that name.
    """
    return _lookup(_KERNELS, name, "kernel", "Known")


def _lookup(table: Mapping[str, MethodSpec], name: str, noun: str, listing: str) -> MethodSpec:
    spec = table.get(name)
    if spec is None:
        raise UnknownMethodError(f"Unknown {noun} {excerpt(name)}.", hint=f"{listing}: {', '.join(sorted(table))}.")
    return spec
