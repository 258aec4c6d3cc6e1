"""Linear merge: a weighted average of the models (Wortsman et al., model soups)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.errors import MergeMethodError
from mergehub.methods._primitives import check_same_shape, weighted_sum
from mergehub.methods.spec import MethodSpec, ParamSpec


def linear(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float],
    normalize: bool,
) -> torch.Tensor:
    """Return `sum(w_i * x_i)`, divided by `sum(w_i)` when `normalize` is set.

    Raises:
        MergeMethodError: `normalize` is set and the weights sum to zero.
    """
    check_same_shape(tensors)
    result = weighted_sum(tensors, weight)
    if normalize:
        total = float(sum(weight))
        if total == 0:
            raise MergeMethodError(
                f"linear: the weights {list(weight)} sum to 0, so they cannot be normalized.",
                hint="Give weights with a non-zero sum, or set `normalize: false`.",
            )
        result.div_(total)
    return result


SPEC = MethodSpec(
    name="linear",
    kernel=linear,
    params=(
        ParamSpec("weight", float, "input"),
        ParamSpec("normalize", bool, "shared", True),
    ),
    summary="Weighted average of the models' parameters.",
    elementwise=True,
    paper="https://arxiv.org/abs/2203.05482",
)
