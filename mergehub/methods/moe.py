"""Kernels of MoE assembly, used by MoE plans only (not recipe methods): an expert's noisy, scaled copy, and zeros."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.methods.spec import MethodSpec, ParamSpec

__all__ = ["EXPERT_SPEC", "ZEROS_SPEC"]


def expert(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    noise_scale: float | None,
    residual_scale: float | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """An expert's tensor as mergekit-moe writes it: plus Gaussian noise times `noise_scale`, times `residual_scale`."""
    (tensor,) = tensors
    if noise_scale is not None:
        tensor = (
            tensor
            + torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype, device=tensor.device) * noise_scale
        )
    if residual_scale is not None:
        tensor = tensor * residual_scale
    return tensor


def zeros(tensors: Sequence[torch.Tensor], *, base_index: int | None, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor of zeros: a parameter the output format has and the base lacks (Qwen2-MoE's attention biases)."""
    return torch.zeros(shape)


EXPERT_SPEC = MethodSpec(
    name="moe_expert",
    kernel=expert,
    params=(ParamSpec("noise_scale", float, "shared", None), ParamSpec("residual_scale", float, "shared", None)),
    summary="An expert's MLP tensor, with its config's noise and residual scale.",
    max_inputs=1,
    random=True,
)
ZEROS_SPEC = MethodSpec(
    name="zeros",
    kernel=zeros,
    params=(ParamSpec("shape", tuple, "shared"),),
    summary="Zeros where the output format needs a tensor that no input has.",
    min_inputs=0,
    max_inputs=0,
)
