"""The table of merge methods, keyed by their mergekit names, built once when this module is imported.

Each method module declares its kernel and its `MethodSpec` side by side and imports only
`spec`; this module imports them all, so there is no import cycle and no registration by
side effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from mergehub.errors import UnknownMethodError, excerpt
from mergehub.methods import (
    arcee_fusion,
    karcher,
    linear,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    ram,
    slerp,
    ties_family,
)
from mergehub.methods.spec import MethodSpec

__all__ = ["all_methods", "get_method", "method_names"]

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
    spec = _METHODS.get(name)
    if spec is None:
        raise UnknownMethodError(f"Unknown merge_method {excerpt(name)}.", hint=f"Use one of: {', '.join(_NAMES)}.")
    return spec
