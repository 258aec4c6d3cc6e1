"""mergekit-moe's YAML config as a frozen, validated model, with mergekit's rules for a config that can work.

Like mergekit, unknown keys are ignored; unlike mergekit, each becomes a `RecipeWarning` with its line.
mergekit's rules, each a `RecipeError` here: at least one expert per token, no more experts per token
than experts, positive prompts for every expert, not the same prompts for every expert, not the same model for
every expert (unless explicitly allowed; as in mergekit, these three are not checked with
`gate_mode: random`), and prompts for all shared experts or none.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import Field, PrivateAttr

from mergehub import safe_yaml
from mergehub.errors import MergehubError, RecipeError, RecipeWarning
from mergehub.moe.gates import GATE_MODES, PROMPT_MODES, PromptSet
from mergehub.recipe import DtypeName, LenientModel, LocatedDocument, ModelRef, Ref, parse_lenient

__all__ = ["Expert", "MoEConfig", "parse_moe_config", "looks_like_moe_config", "is_moe_text"]


class Expert(LenientModel):
    """One expert (or shared expert): the model whose MLPs it takes, its prompts, and its noise and scale."""

    source_model: Ref
    positive_prompts: list[str] | None = None
    negative_prompts: list[str] | None = None
    noise_scale: float | None = None
    residual_scale: float | None = None

    def prompt_set(self) -> PromptSet:
        """The expert's prompts, as the gates use them."""
        return PromptSet(tuple(self.positive_prompts or ()), tuple(self.negative_prompts or ()))


class MoEConfig(LenientModel, LocatedDocument):
    """A mergekit-moe config: a base model, its experts, how their routers are initialised, and the output's shape."""

    base_model: Ref
    experts: list[Expert] = Field(min_length=1)
    gate_mode: str = "hidden"
    dtype: DtypeName | None = None
    experts_per_token: int = 2
    shared_experts: list[Expert] | None = None
    architecture: str | None = None
    _warnings: tuple[RecipeWarning, ...] = PrivateAttr(default=())
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)
    _text: str = PrivateAttr(default="")

    @property
    def text(self) -> str:
        """The config's YAML as written (or dumped, when built in code)."""
        return self._text or yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    @property
    def warnings(self) -> tuple[RecipeWarning, ...]:
        """The keys the config sets that are ignored, with their lines."""
        return self._warnings

    def error(self, location: str, message: str, hint: str) -> RecipeError:
        """A `RecipeError` about `location`, with its line."""
        return RecipeError(
            f"{location}: {message}" if location else message, hint=hint, location=location, line=self.line_of(location)
        )

    def location_of(self, ref: ModelRef) -> str:
        """Where the config first names a model: `base_model`, `experts[1].source_model`, `shared_experts[0]...`."""
        if ref == self.base_model:
            return "base_model"
        for group, experts in (("experts", self.experts), ("shared_experts", self.shared_experts or [])):
            for i, expert in enumerate(experts):
                if expert.source_model == ref:
                    return f"{group}[{i}].source_model"
        return ""

    def referenced_models(self) -> list[ModelRef]:
        """The base, then each expert's and shared expert's model, without repeats."""
        refs = [
            self.base_model,
            *(e.source_model for e in self.experts),
            *(e.source_model for e in self.shared_experts or ()),
        ]
        return list(dict.fromkeys(refs))

    def gated_experts(self) -> list[Expert]:
        """The experts with router rows: each routed expert, then shared ones with prompts (all, for random gates)."""
        shared = self.shared_experts or []
        if any(e.positive_prompts for e in shared) or self.gate_mode in ("random", "uniform_random"):
            return [*self.experts, *shared]
        return list(self.experts)

    def check(self, *, allow_all_same: bool = False) -> None:
        """mergekit-moe's rules for a config that produces a working MoE.

        Raises:
            RecipeError: a rule is broken; the error names where.
        """
        if self.gate_mode not in GATE_MODES:
            close = difflib.get_close_matches(self.gate_mode, GATE_MODES, n=1)
            raise self.error(
                "gate_mode",
                f"{self.gate_mode!r} is not a gate mode.",
                f"{'Did you mean ' + repr(close[0]) + '? ' if close else ''}Use one of: {', '.join(GATE_MODES)}.",
            )
        if self.experts_per_token < 1:
            raise self.error(
                "experts_per_token",
                f"{self.experts_per_token} experts per token: at least 1 is needed.",
                "Use 1 or more (2 is usual).",
            )
        if len(self.experts) < self.experts_per_token:
            raise self.error(
                "experts_per_token",
                f"{self.experts_per_token} experts per token, but only {len(self.experts)} experts.",
                "Add experts, or lower experts_per_token.",
            )
        shared = self.shared_experts or []
        if any(bool(e.positive_prompts) != bool(shared[0].positive_prompts) for e in shared):
            raise self.error(
                "shared_experts",
                "some shared experts have prompts and some do not.",
                "Give prompts to all shared experts or to none.",
            )
        if self.gate_mode != "random":
            for i, expert in enumerate(self.experts):
                if not expert.positive_prompts:
                    raise self.error(
                        f"experts[{i}]",
                        "this expert has no positive_prompts.",
                        f"`gate_mode: {self.gate_mode}` needs prompts that describe what each expert should get "
                        "(mergekit-moe's rule; only `gate_mode: random` goes without).",
                    )
            prompts = [e.prompt_set() for e in self.experts]
            if len(self.experts) > 1 and all(p == prompts[0] for p in prompts[1:]):
                raise self.error(
                    "experts",
                    "the positive and negative prompts are the same for every expert: "
                    "the router could not tell them apart.",
                    "Give each expert prompts typical of what it should handle (mergekit-moe refuses this too).",
                )
            if (
                not allow_all_same
                and len(self.experts) > 1
                and all(e.source_model == self.experts[0].source_model for e in self.experts)
            ):
                raise self.error(
                    "experts",
                    f"every expert is {self.experts[0].source_model}: the MoE would cost more and answer the same.",
                    "Use different fine-tunes, or allow it explicitly if you will train the model further "
                    "(`--i-understand-this-is-not-useful-without-training`).",
                )

    @property
    def prompt_mode(self) -> bool:
        """Whether the gates are computed from prompts."""
        return self.gate_mode in PROMPT_MODES


_KNOWN_KEYS = sorted(MoEConfig.model_fields)


def looks_like_moe_config(data: Any) -> bool:
    """Whether parsed YAML is a mergekit-moe config rather than a merge recipe: `experts:` and no `merge_method:`."""
    return isinstance(data, dict) and "experts" in data and "merge_method" not in data


def is_moe_text(text: str) -> bool:
    """Whether a YAML text is a mergekit-moe config; False for text that is no valid YAML (the recipe parser then
    says what is wrong)."""
    try:
        return looks_like_moe_config(safe_yaml.load(text))
    except (MergehubError, yaml.YAMLError):
        return False


def parse_moe_config(text: str) -> MoEConfig:
    """Parse mergekit-moe YAML into a validated `MoEConfig`, with a warning for each key it ignores.

    Raises:
        RecipeError: the YAML is malformed or does not follow mergekit-moe's schema.
    """
    config, lines, warnings = parse_lenient(
        text, MoEConfig, what="The MoE config", hint=f"mergekit-moe's keys are: {', '.join(_KNOWN_KEYS)}."
    )
    config._lines = lines
    config._text = text
    config._warnings = tuple(sorted(warnings, key=lambda w: w.line or 0))
    return config
