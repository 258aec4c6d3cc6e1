"""Variants of a recipe: `--vary PATH=VALUES` parsed, expanded into a grid or random samples, applied to the YAML.

A PATH addresses one value of a mergekit recipe, as it is written in the YAML::

    merge_method                       a top-level key
    parameters.density                 a key under a key (missing mappings are created)
    models[1].parameters.weight        an entry of a list by index
    models[org/name].parameters.weight the `models:` (or `sources:`) entry of that model
    parameters.t[self_attn]            the value of the `filter: self_attn` entry of a filtered setting
    parameters.t                       a whole setting: a scalar, a gradient `[0, 0.5, 1]`, a filter list

VALUES is a comma-separated list of YAML values (`0.3,0.5,0.7`, `linear,slerp`, `[0,0.5,1],[1,0.5,0]`) or
a range `START:STOP:COUNT` of COUNT evenly spaced numbers, both ends included (`0.2:0.8:4`).
"""

from __future__ import annotations

import copy
import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from mergehub import safe_yaml
from mergehub.errors import RecipeError
from mergehub.recipe import Recipe, parse_recipe

__all__ = [
    "Vary",
    "Variant",
    "parse_vary",
    "parse_path",
    "set_value",
    "grid",
    "sample",
    "apply_variant",
    "variant_label",
]

_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)?((?:\[[^\[\]]+\])*)")
_SELECTOR = re.compile(r"\[([^\[\]]+)\]")
_RANGE = re.compile(r"\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*:\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*:\s*(\d+)\s*", re.IGNORECASE)
_PATH_HINT = "Write a path like `parameters.density`, `models[1].parameters.weight` or `parameters.t[self_attn]`."


@dataclass(frozen=True)
class Vary:
    """One `--vary`: a recipe path and the values it takes; a range also keeps its bounds, for random samples."""

    path: str
    values: tuple[Any, ...]
    bounds: tuple[float, float] | None = None

    @property
    def numeric(self) -> bool:
        """Whether every value is a number (plotted on a numeric axis)."""
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)


@dataclass(frozen=True)
class Variant:
    """One point of the experiment: a value for each varied path, in `--vary` order."""

    index: int
    values: tuple[tuple[str, Any], ...]

    @property
    def label(self) -> str:
        """`path=value` pairs, as a column heading or a plot legend would show them."""
        return variant_label(self.values)

    @property
    def name(self) -> str:
        """A short file-name-safe id: `v003`."""
        return f"v{self.index:03d}"


def variant_label(values: Sequence[tuple[str, Any]]) -> str:
    """`models[1].parameters.weight=0.5, merge_method=slerp`."""
    return ", ".join(f"{path}={format_value(value)}" for path, value in values)


def format_value(value: Any) -> str:
    """A value as it would be typed after `--vary PATH=`: numbers to 4 significant digits, lists in brackets."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets, braces and quotes."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _parse_values(path: str, text: str) -> tuple[tuple[Any, ...], tuple[float, float] | None]:
    match = _RANGE.fullmatch(text)
    if match:
        start, stop, count = float(match[1]), float(match[2]), int(match[3])
        if count < 1:
            raise RecipeError(
                f"--vary {path}: a range needs at least one point, got {text!r}.",
                hint="Write START:STOP:COUNT, e.g. 0.2:0.8:4.",
            )
        step = (stop - start) / (count - 1) if count > 1 else 0.0
        return tuple(round(start + i * step, 10) for i in range(count)), (start, stop)
    values = []
    for part in _split_top_level(text):
        if not part:
            raise RecipeError(
                f"--vary {path}: an empty value in {text!r}.", hint="Separate values with single commas: 0.3,0.5,0.7."
            )
        try:
            values.append(yaml.safe_load(part))
        except yaml.YAMLError as e:
            raise RecipeError(
                f"--vary {path}: {part!r} is not a YAML value: {e}", hint="Quote strings that contain ':' or '#'."
            ) from e
    return tuple(values), None


def parse_vary(text: str) -> Vary:
    """Parse one `PATH=VALUES` argument.

    Raises:
        RecipeError: the path or the values are malformed.
    """
    path, sep, values = text.partition("=")
    path = path.strip()
    if not sep or not path or not values.strip():
        raise RecipeError(
            f"--vary {text!r} is not PATH=VALUES.", hint="For example: --vary models[1].parameters.weight=0.3,0.5,0.7"
        )
    parse_path(path)
    parsed, bounds = _parse_values(path, values.strip())
    return Vary(path, parsed, bounds)


def parse_path(path: str) -> list[str | int]:
    """A path as a list of steps: keys as strings, indices as ints, selectors by name as `"[name]"` strings.

    Raises:
        RecipeError: the path is malformed.
    """
    steps: list[str | int] = []
    for k, segment in enumerate(path.split(".")) if path else []:
        match = _SEGMENT.fullmatch(segment)
        if not segment or not match or (k == 0 and not match[1]):
            raise RecipeError(f"--vary path {path!r} is malformed at {segment!r}.", hint=_PATH_HINT)
        if match[1]:
            steps.append(match[1])
        for selector in _SELECTOR.findall(match[2] or ""):
            selector = selector.strip()
            steps.append(int(selector) if re.fullmatch(r"-?\d+", selector) else f"[{selector}]")
    if not steps:
        raise RecipeError("--vary needs a path.", hint=_PATH_HINT)
    return steps


def _where(steps: list[str | int], upto: int) -> str:
    text = ""
    for step in steps[:upto]:
        text += (
            f"[{step}]" if isinstance(step, int) else step if step.startswith("[") else (f".{step}" if text else step)
        )
    return text or "the recipe"


def _select(container: list, name: str, steps: list[str | int], k: int) -> tuple[Any, Any]:
    """The (container, key) that `[name]` addresses in a list: a model's entry, or a filter entry's value."""
    for i, entry in enumerate(container):
        if isinstance(entry, dict) and str(entry.get("model")) == name:
            return container, i
        if isinstance(entry, dict) and "filter" in entry and str(entry.get("filter")) == name:
            return entry, "value"
    found = [
        str(e.get("model", e.get("filter")))
        for e in container
        if isinstance(e, dict) and ("model" in e or "filter" in e)
    ]
    raise RecipeError(
        f"--vary path {_where(steps, k + 1)}: no entry of {_where(steps, k)} has model or filter {name!r}.",
        hint=f"Entries there: {', '.join(found) or 'none with a model or filter'}.",
    )


def set_value(data: dict, path: str, value: Any) -> None:
    """Set the value at `path` in recipe data (a dict loaded from YAML), creating missing mappings on the way.

    Raises:
        RecipeError: the path runs into a value of the wrong kind, an index out of range, or an unknown name.
    """
    steps = parse_path(path)
    container: Any = data
    key: Any = None
    for k, step in enumerate(steps):
        if key is not None:
            current = container.get(key) if isinstance(container, dict) else container[key]
            if current is None and isinstance(step, str) and not step.startswith("["):
                container[key] = {}
            container = container[key]
        if isinstance(step, int):
            if not isinstance(container, list):
                raise RecipeError(
                    f"--vary path {_where(steps, k + 1)}: {_where(steps, k)} is not a list.", hint=_PATH_HINT
                )
            if not -len(container) <= step < len(container):
                raise RecipeError(
                    f"--vary path {_where(steps, k + 1)}: index {step} is out of range; {_where(steps, k)} has "
                    f"{len(container)} entries.",
                    hint=f"Use an index from 0 to {len(container) - 1}.",
                )
            key = step
        elif step.startswith("["):
            if not isinstance(container, list):
                raise RecipeError(
                    f"--vary path {_where(steps, k + 1)}: {_where(steps, k)} is not a list.", hint=_PATH_HINT
                )
            container, key = _select(container, step[1:-1], steps, k)
        else:
            if isinstance(container, list):
                raise RecipeError(
                    f"--vary path {_where(steps, k + 1)}: {_where(steps, k)} is a list.",
                    hint=f"Pick an entry first: {_where(steps, k)}[0] (by index) or {_where(steps, k)}[NAME] "
                    "(by model or filter).",
                )
            if not isinstance(container, dict):
                raise RecipeError(
                    f"--vary path {_where(steps, k + 1)}: {_where(steps, k)} is {format_value(container)!r}, "
                    "not a mapping.",
                    hint=_PATH_HINT,
                )
            key = step
    container[key] = value


def grid(varies: Sequence[Vary]) -> list[Variant]:
    """Every combination of the values, the first `--vary` changing slowest.

    Raises:
        RecipeError: two `--vary` name the same path.
    """
    _check_distinct(varies)
    points = itertools.product(*(v.values for v in varies))
    return [Variant(i, tuple(zip((v.path for v in varies), point))) for i, point in enumerate(points)]


def sample(varies: Sequence[Vary], count: int, seed: int) -> list[Variant]:
    """`count` random points: a range draws uniformly between its bounds, a list picks one of its values.

    Raises:
        RecipeError: `count` is below 1, or two `--vary` name the same path.
    """
    _check_distinct(varies)
    if count < 1:
        raise RecipeError(f"--samples must be at least 1, got {count}.")
    rng = random.Random(seed)
    variants = []
    for i in range(count):
        point = tuple(
            (
                v.path,
                round(rng.uniform(*v.bounds), 6)
                if v.bounds is not None and len(v.values) > 1
                else rng.choice(v.values),
            )
            for v in varies
        )
        variants.append(Variant(i, point))
    return variants


def _check_distinct(varies: Sequence[Vary]) -> None:
    paths = [v.path for v in varies]
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise RecipeError(
            f"--vary names {', '.join(repeated)} more than once.", hint="Give each path one --vary with all its values."
        )
    if not varies:
        raise RecipeError(
            "Nothing to vary.", hint="Add --vary PATH=VALUES, e.g. --vary parameters.density=0.3,0.5,0.7."
        )


def apply_variant(recipe_text: str, variant: Variant) -> tuple[Recipe, str]:
    """The recipe with the variant's values set, validated, and its YAML text.

    Raises:
        RecipeError: a path does not fit the recipe, or the result is not a valid recipe (the message names the
        variant).
    """
    data = safe_yaml.load(recipe_text)
    if not isinstance(data, dict):
        raise RecipeError("The recipe must be a YAML mapping.")
    data = copy.deepcopy(data)
    for path, value in variant.values:
        set_value(data, path, copy.deepcopy(value))
    text = yaml.safe_dump(data, sort_keys=False)
    try:
        return parse_recipe(text), text
    except RecipeError as e:
        raise RecipeError(f"Variant {variant.name} ({variant.label}): {e.message}", hint=e.hint) from e
