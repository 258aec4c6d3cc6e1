"""mergekit's YAML recipe as frozen, validated models, and the evaluation of parameter settings."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, field_validator, model_validator

from mergehub import safe_yaml
from mergehub.errors import RecipeError, excerpt

__all__ = [
    "ModelRef",
    "ConditionalValue",
    "Setting",
    "InputModel",
    "InputSlice",
    "OutputSlice",
    "TokenizerSettings",
    "Recipe",
    "load_recipe",
    "parse_recipe",
    "evaluate_setting",
    "recipe_sha256",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def _exists(path: str, *, directory: bool = False) -> bool:
    """Whether `path` names an existing file or directory; a name the OS refuses (too long, NUL) does not."""
    try:
        return Path(path).is_dir() if directory else Path(path).exists()
    except (OSError, ValueError):
        return False


@dataclass(frozen=True, order=True)
class ModelRef:
    """A model: a local directory or a Hub repo ID, with an optional revision (`org/name@rev`)."""

    path: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse `path`, `org/name` or `org/name@revision`."""
        text = text.strip()
        if not text:
            raise RecipeError("A model reference is empty.", hint="Give a local directory or a Hub ID like `org/name`.")
        if "+" in text and not _exists(text):
            raise RecipeError(
                f"Model reference {excerpt(text)} applies a LoRA (`model+lora`), which mergehub does not support yet.",
                hint="Merge the LoRA into its base first (peft's `merge_and_unload`), then reference that model.",
            )
        if "@" in text and not _exists(text):
            path, _, revision = text.rpartition("@")
            if not path or not revision:
                raise RecipeError(f"Model reference {excerpt(text)} is malformed.", hint="Use `org/name@revision`.")
            return cls(path, revision)
        return cls(text)

    @property
    def is_local(self) -> bool:
        """Whether the reference names an existing local directory."""
        return self.revision is None and _exists(self.path, directory=True)

    @property
    def looks_like_hub_id(self) -> bool:
        """Whether the path has the shape of a Hub repo ID."""
        return bool(_HUB_ID.match(self.path))

    def __str__(self) -> str:
        return self.path if self.revision is None else f"{self.path}@{self.revision}"


Scalar = Union[bool, int, float, str]
ScalarOrGradient = Union[Scalar, list[Scalar]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConditionalValue(_Strict):
    """One `{filter, value}` entry: applies when `filter` is a substring of the tensor name."""

    value: ScalarOrGradient
    filter: str | None = None


Setting = Union[ScalarOrGradient, ConditionalValue, list[ConditionalValue]]
Parameters = dict[str, Setting]


def _parse_ref(value: Any) -> ModelRef:
    if isinstance(value, ModelRef):
        return value
    if not isinstance(value, str):
        raise ValueError("a model reference must be a string like `org/name`, `org/name@revision` or a path")
    return ModelRef.parse(value)


Ref = Annotated[ModelRef, BeforeValidator(_parse_ref), PlainSerializer(str)]


class _WithModel(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class InputModel(_WithModel):
    """An entry of `models:`: a whole model and its parameters."""

    model: Ref
    parameters: Parameters | None = None


class InputSlice(_WithModel):
    """A source of a slice: a model's layers `[start, end)` and their parameters."""

    model: Ref
    layer_range: tuple[int, int]
    parameters: Parameters | None = None

    @field_validator("layer_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= value[0] < value[1]:
            raise ValueError(f"layer_range {list(value)} must satisfy 0 <= start < end")
        return value


class OutputSlice(_WithModel):
    """An entry of `slices:`: one block of output layers merged from its sources."""

    sources: list[InputSlice] = Field(min_length=1)
    base_model: Ref | None = None
    parameters: Parameters | None = None


class TokenizerSettings(_WithModel):
    """The `tokenizer:` block: where the vocabulary comes from (mergekit's default: `union`) and how tokens are filled."""

    source: str = "union"
    tokens: dict[str, Any] | None = None
    pad_to_multiple_of: int | None = Field(default=None, gt=0)


class Recipe(_WithModel):
    """A merge recipe in mergekit's YAML schema."""

    merge_method: str
    base_model: Ref | None = None
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    parameters: Parameters | None = None
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    out_dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerSettings | None = None
    chat_template: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one_input_form(self) -> Recipe:
        if bool(self.models) == bool(self.slices):
            raise ValueError("give exactly one of `models:` or `slices:`")
        if self.tokenizer_source and self.tokenizer:
            raise ValueError("give either `tokenizer_source` or `tokenizer`, not both")
        return self

    def referenced_models(self) -> list[ModelRef]:
        """Every model the recipe names, base first, then in recipe order, without repeats."""
        refs: list[ModelRef] = [self.base_model] if self.base_model else []
        for entry in self.models or []:
            refs.append(entry.model)
        for out_slice in self.slices or []:
            if out_slice.base_model:
                refs.append(out_slice.base_model)
            refs.extend(source.model for source in out_slice.sources)
        return list(dict.fromkeys(refs))

    def parameter_names(self) -> set[str]:
        """Every parameter name the recipe sets anywhere."""
        dicts = [self.parameters]
        dicts += [m.parameters for m in self.models or []]
        for out_slice in self.slices or []:
            dicts.append(out_slice.parameters)
            dicts += [s.parameters for s in out_slice.sources]
        return {name for d in dicts if d for name in d}


_MAX_LISTED = 20


def _describe_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors(include_input=False):
        where = ".".join(str(p) if len(str(p)) <= 40 else str(p)[:39] + "…" for p in item["loc"]) or "recipe"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {where}: {message}")
    unique = list(dict.fromkeys(lines))
    more = len(unique) - _MAX_LISTED
    return "\n".join(unique[:_MAX_LISTED] + ([f"  ... and {more} more"] if more > 0 else []))


_KNOWN_KEYS = sorted(Recipe.model_fields)


def parse_recipe(text: str) -> Recipe:
    """Parse recipe YAML text into a validated `Recipe`.

    Raises:
        RecipeError: the YAML is malformed or does not follow mergekit's schema.
    """
    try:
        data = safe_yaml.load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"The recipe is not valid YAML: {e}", hint="Check indentation and quoting.") from e
    if not isinstance(data, dict):
        raise RecipeError("The recipe must be a YAML mapping.", hint=f"Top-level keys: {', '.join(_KNOWN_KEYS)}.")
    if "modules" in data:
        raise RecipeError("`modules:` recipes are not supported yet.", hint="Use `models:` or `slices:`.")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(
            "The recipe is invalid:\n" + _describe_validation_error(e),
            hint=f"Recipe keys are: {', '.join(_KNOWN_KEYS)}; see README's recipe reference.",
        ) from e


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file (at most `MERGEHUB_MAX_RECIPE_BYTES`, no YAML aliases)."""
    return parse_recipe(safe_yaml.read_text(path))


def recipe_sha256(text: str) -> str:
    """A stable hash of a recipe's YAML text, used to recognise reruns."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def evaluate_setting(setting: Setting, tensor_name: str, t: float) -> Any:
    """The value a setting takes for `tensor_name` at relative layer depth `t` (0..1).

    A list of numbers is a gradient interpolated piecewise-linearly over `t`; a list of
    other scalars picks an entry by `t`; `{filter, value}` entries apply when the filter
    is a substring of the name (no filter, or `*`, always applies). None when no entry applies.
    """
    if isinstance(setting, ConditionalValue):
        setting = [setting]
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, ConditionalValue) for e in setting):
            for entry in setting:
                if entry.filter in (None, "*") or entry.filter in tensor_name:
                    return evaluate_setting(entry.value, tensor_name, t)
            return None
        if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            scaled = t * (len(setting) - 1)
            low = int(scaled)
            high = min(len(setting) - 1, low + 1)
            frac = scaled - low
            return (1 - frac) * setting[low] + frac * setting[high]
        return setting[int(t * (len(setting) - 1))]
    return setting
