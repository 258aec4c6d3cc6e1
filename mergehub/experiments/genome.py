"""mergekit-evolve's configuration and genome, read and decoded into plain mergehub recipes.

The configuration (`genome:`, `tasks:`, `limit`, `num_fewshot`, ...) is mergekit-evolve's schema. A genotype is
a flat vector viewed as `(layer groups, models, filter sets, method parameters)`:

- layer groups: `num_layers / layer_granularity` slices of consecutive layers (one group when granularity is 0);
- filter sets: one per entry of `filters` (tensor-name substrings), plus one for every other tensor;
- method parameters: `weight` (linear, task_arithmetic), `weight` and `density` (ties, dare_ties), `t` (slerp).

Decoding follows mergekit-evolve: densities are `|x|` clipped to [0, 1]; weights are `|x|` unless
`allow_negative_weights`; `smooth` writes each parameter as a gradient over the layer groups under `models:`
instead of one slice per group; slerp takes, per group, the two models of highest weight, the first as base
and `t` = the softmax weight of the second. `normalize` defaults to true for linear, ties and dare_ties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from mergehub import safe_yaml
from mergehub.architecture import num_layers
from mergehub.errors import RecipeError
from mergehub.methods import get_method

__all__ = ["METHOD_PARAMETERS", "TaskSpec", "GenomeSpec", "EvolveConfig", "load_evolve_config", "Genome"]

METHOD_PARAMETERS: dict[str, tuple[str, ...]] = {
    "linear": ("weight",),
    "task_arithmetic": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "slerp": ("t",),
}
"""The parameters a genome sets per model, layer group and filter, by merge method (mergekit-evolve's table)."""

_NEEDS_BASE = ("ties", "dare_ties", "task_arithmetic")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(_Config):
    """A fitness term: an lm-eval task, the metric read from its results (`acc,none`), and its weight."""

    name: str
    weight: float = 1.0
    metric: str = "acc,none"

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class GenomeSpec(_Config):
    """The `genome:` block: which models, how they merge, and how finely the search may vary it."""

    models: list[str]
    merge_method: Literal["linear", "task_arithmetic", "ties", "dare_ties", "slerp"]
    base_model: str | None = None
    tokenizer_source: str | None = None
    layer_granularity: int = 0
    normalize: bool | None = None
    allow_negative_weights: bool = False
    filters: list[str] | None = None
    smooth: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> GenomeSpec:
        if len(self.models) < 2:
            raise ValueError("a genome needs at least two models")
        if self.merge_method in _NEEDS_BASE and self.base_model is None:
            raise ValueError(f"{self.merge_method} needs a base_model")
        if self.merge_method == "slerp" and (self.smooth or self.filters):
            raise ValueError("slerp supports neither smooth nor filters")
        if self.layer_granularity < 0:
            raise ValueError("layer_granularity must be 0 (the whole model) or positive")
        return self


class EvolveConfig(_Config):
    """A mergekit-evolve configuration file."""

    genome: GenomeSpec
    tasks: list[TaskSpec]
    limit: int | None = None
    num_fewshot: int | None = None
    shuffle: bool = False
    random_init: bool = False
    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = True


def load_evolve_config(path: str | Path) -> EvolveConfig:
    """Read and validate a mergekit-evolve YAML file.

    Raises:
        RecipeError: the file cannot be read, is not YAML, or does not follow the schema (each problem located).
    """
    what = "The evolve configuration"
    try:
        data = safe_yaml.load(safe_yaml.read_text(path, what=what), what=what)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}", hint="Check indentation and quoting.") from e
    try:
        config = EvolveConfig.model_validate(data)
    except ValidationError as e:
        problems = "\n".join(
            f"  {'.'.join(map(str, err['loc'])) or 'config'}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        )
        raise RecipeError(
            f"{path} is not a valid mergekit-evolve configuration:\n{problems}",
            hint="See mergekit-evolve's genome and tasks keys.",
        ) from e
    if not config.tasks:
        raise RecipeError(f"{path} lists no tasks.", hint="Add `tasks:` with at least one lm-eval task.")
    return config


class Genome:
    """Decodes genotypes of a `GenomeSpec` for models of `layers` layers into recipes."""

    def __init__(self, spec: GenomeSpec, layers: int) -> None:
        granularity = spec.layer_granularity
        if granularity > 0 and layers % granularity:
            raise RecipeError(
                f"layer_granularity {granularity} does not divide the models' {layers} layers.",
                hint=f"Choose a divisor of {layers}, or 0 for one group.",
            )
        self.spec = spec
        self.layers = layers
        self.step = granularity if granularity > 0 else layers
        self.groups = layers // self.step
        self.sets = len(spec.filters or []) + 1
        self.parameters = METHOD_PARAMETERS[spec.merge_method]
        self.shape = (self.groups, len(spec.models), self.sets, len(self.parameters))

    @classmethod
    def for_models(cls, spec: GenomeSpec, config: dict) -> Genome:
        """The genome of `spec`, its layer count read from the first model's config.

        Raises:
            RecipeError: the config names no layer count, or the granularity does not divide it.
        """
        layers = num_layers(config)
        if layers is None:
            raise RecipeError(
                f"{spec.models[0]}: config.json names no layer count.", hint="A genome needs models with layers."
            )
        return cls(spec, layers)

    @property
    def size(self) -> int:
        """The length of a flat genotype."""
        return math.prod(self.shape)

    def initial(self, random: Any = None) -> list[float]:
        """mergekit-evolve's starting point: weights 1/models and other parameters 1; uniform in [0, 1) from `random`
        (a `numpy.random.Generator`) when given."""
        if random is not None:
            return [float(x) for x in random.random(self.size)]
        first = 1.0 / len(self.spec.models)
        return [first if k % len(self.parameters) == 0 else 1.0 for k in range(self.size)]

    def _value(self, genotype: Sequence[float], group: int, model: int, filter_set: int, parameter: int) -> float:
        g, m, s, p = self.shape
        x = float(genotype[((group * m + model) * s + filter_set) * p + parameter])
        name = self.parameters[parameter]
        if name == "density":
            return min(abs(x), 1.0)
        if name in ("weight", "t") and not self.spec.allow_negative_weights:
            return abs(x)
        return x

    def _setting(self, values: list[float]) -> float | list[float]:
        return values[0] if len(values) == 1 else values

    def _parameters(self, genotype: Sequence[float], model: int, groups: Sequence[int]) -> dict[str, Any]:
        """A model's parameters over `groups` (one group: scalars; several: gradients); filtered sets as filter
        lists."""
        filters: list[str | None] = [*(self.spec.filters or []), None]
        params: dict[str, Any] = {}
        for p, name in enumerate(self.parameters):
            per_set = [
                self._setting([round(self._value(genotype, g, model, s, p), 6) for g in groups])
                for s in range(self.sets)
            ]
            if self.sets == 1:
                params[name] = per_set[0]
            else:
                params[name] = [
                    {"filter": f, "value": v} if f is not None else {"value": v} for f, v in zip(filters, per_set)
                ]
        return params

    def _range(self, group: int) -> list[int]:
        return [group * self.step, (group + 1) * self.step]

    def _base_source(self, group: int) -> list[dict[str, Any]]:
        base = self.spec.base_model
        return [{"model": base, "layer_range": self._range(group)}] if base and base not in self.spec.models else []

    def _slerp_slices(self, genotype: Sequence[float]) -> list[dict[str, Any]]:
        slices = []
        for group in range(self.groups):
            weights = [
                float(genotype[((group * len(self.spec.models) + m) * self.sets) * len(self.parameters)])
                for m in range(len(self.spec.models))
            ]
            first, second = sorted(range(len(weights)), key=lambda m: (-weights[m], m))[:2]
            top = (weights[first], weights[second])
            t = math.exp(top[1] - max(top)) / (math.exp(top[0] - max(top)) + math.exp(top[1] - max(top)))
            sources = [{"model": self.spec.models[m], "layer_range": self._range(group)} for m in (first, second)]
            slices.append(
                {
                    "sources": sources + self._base_source(group),
                    "base_model": self.spec.models[first],
                    "parameters": {"t": round(t, 6)},
                }
            )
        return slices

    def recipe(self, genotype: Sequence[float]) -> dict[str, Any]:
        """The mergehub (and mergekit) recipe a genotype decodes to, as YAML-ready data.

        Raises:
            RecipeError: the genotype has the wrong length.
        """
        if len(genotype) != self.size:
            raise RecipeError(f"A genotype of {len(genotype)} values does not fit this genome's {self.size}.")
        spec = self.spec
        recipe: dict[str, Any] = {"merge_method": spec.merge_method}
        if spec.base_model:
            recipe["base_model"] = spec.base_model
        if spec.merge_method == "slerp":
            recipe["slices"] = self._slerp_slices(genotype)
        elif spec.smooth:
            models = [
                {"model": model, "parameters": self._parameters(genotype, m, range(self.groups))}
                for m, model in enumerate(spec.models)
            ]
            if spec.base_model and spec.base_model not in spec.models:
                models.append({"model": spec.base_model})
            recipe["models"] = models
        else:
            recipe["slices"] = [
                {
                    "sources": [
                        {
                            "model": model,
                            "layer_range": self._range(group),
                            "parameters": self._parameters(genotype, m, [group]),
                        }
                        for m, model in enumerate(spec.models)
                    ]
                    + self._base_source(group)
                }
                for group in range(self.groups)
            ]
        method = get_method(spec.merge_method)
        normalize = (
            spec.normalize if spec.normalize is not None else spec.merge_method in ("ties", "dare_ties", "linear")
        )
        parameters = {
            name: value
            for name, value in (("normalize", normalize), ("int8_mask", True))
            if method.param(name) is not None
        }
        if parameters:
            recipe["parameters"] = parameters
        recipe["dtype"] = "bfloat16"
        if spec.tokenizer_source:
            recipe["tokenizer_source"] = spec.tokenizer_source
        return recipe

    def recipe_yaml(self, genotype: Sequence[float]) -> str:
        """The decoded recipe as YAML text."""
        return yaml.safe_dump(self.recipe(genotype), sort_keys=False)
