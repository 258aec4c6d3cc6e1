"""What a `Plan` records of an MoE assembly: the architecture, the experts with their prompts, the gate computation."""

from __future__ import annotations

from dataclasses import dataclass

from mergehub.moe.gates import GateSpec
from mergehub.recipe import ModelRef

__all__ = ["MoEExpert", "MoELayout", "GATES", "GATES_REF", "MOE_RECIPE_FILE"]

GATES = "(router gates)"
"""The model key router jobs read from: the computed gates, a source given to the executor beside the plan's models."""
GATES_REF = ModelRef(GATES)
"""The reference the gate source is given under, with the plan's models' sources."""
MOE_RECIPE_FILE = "mergekit_moe_config.yml"
"""Where an MoE's config is written in its output, as mergekit-moe writes it."""


@dataclass(frozen=True)
class MoEExpert:
    """An expert as the plan records it: its model (key in `Plan.models`), prompts, noise and scale, whether shared."""

    model: str
    positive_prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...] = ()
    noise_scale: float | None = None
    residual_scale: float | None = None
    shared: bool = False


@dataclass(frozen=True)
class MoELayout:
    """What makes a plan an MoE assembly: the output architecture, the experts, and how their routers are computed."""

    architecture: str
    experts_per_token: int
    experts: tuple[MoEExpert, ...]
    gates: GateSpec
