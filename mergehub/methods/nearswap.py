"""NearSwap: take the other model's value only where it is already close to the base's."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods._primitives import check_same_shape, lerp
from mergehub.methods._spherical import base_and_other
from mergehub.methods.spec import MethodSpec, ParamSpec


def nearswap(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    t: float,
) -> torch.Tensor:
    """Interpolate each parameter from the base toward the other model by `clamp(t / |base - other|, 0, 1)`.

    Differences at or below `t` are fully swapped; |base - other| is floored at 1e-6.
    """
    check_same_shape(tensors)
    base, other = base_and_other(tensors, base_index, "nearswap")
    weight = (t / (base - other).abs().clamp(min=1e-6)).clamp(0, 1)
    return lerp(weight, base, other)


SPEC = MethodSpec(
    name="nearswap",
    kernel=nearswap,
    params=(ParamSpec("t", float, "shared"),),
    summary="Moves the base toward one other model only where their parameters differ by about t or less.",
    paper="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    base="required",
    min_inputs=2,
    max_inputs=2,
    elementwise=True,
)
