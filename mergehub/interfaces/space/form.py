"""The form <-> recipe mapping: what the form shows, the YAML it writes, and the form a recipe fills."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from mergehub import safe_yaml
from mergehub.errors import RecipeError
from mergehub.interfaces.space.safety import MAX_MODELS, MAX_RECIPE_BYTES, check_recipe_text
from mergehub.methods import MethodSpec, ParamSpec, get_method
from mergehub.recipe import ConditionalValue, Recipe

FILTERS = ("self_attn", "mlp")
"""The tensor-name filters the form offers per shared parameter."""
_FORM_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype")


@dataclass(frozen=True)
class SharedValue:
    """The texts of one shared parameter: its value, and optional values for `self_attn` and `mlp` tensors."""

    default: str = ""
    self_attn: str = ""
    mlp: str = ""

    def is_empty(self) -> bool:
        """Whether no text is set."""
        return not (self.default.strip() or self.self_attn.strip() or self.mlp.strip())


@dataclass
class Form:
    """What the form shows: the method, the models and each parameter as text, as the visitor typed it.

    `models` excludes the base; `base_position` is where a parameterless base entry sat in the
    recipe's `models:` list (kept so that YAML -> form -> YAML changes nothing).
    `layer_ranges` holds passthrough slices, one `org/model START-END` per line.
    """

    method: str
    base: str = ""
    models: list[str] = field(default_factory=list)
    model_params: list[dict[str, str]] = field(default_factory=list)
    shared: dict[str, SharedValue] = field(default_factory=dict)
    layer_ranges: str = ""
    dtype: str = ""
    base_position: int | None = None

    def params_of(self, index: int) -> dict[str, str]:
        """The parameter texts of model `index` (empty when none)."""
        return self.model_params[index] if index < len(self.model_params) else {}


def shared_specs(spec: MethodSpec) -> list[ParamSpec]:
    """The method's parameters set once for all models."""
    return [p for p in spec.params if p.scope == "shared"]


def model_specs(spec: MethodSpec) -> list[ParamSpec]:
    """The method's parameters set per model."""
    return [p for p in spec.params if p.scope != "shared"]


def _scalar(text: str, kind: type) -> bool | int | float:
    low = text.strip().lower()
    if kind is bool:
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"{text!r} is not true or false")
    try:
        number: int | float = int(low)
    except ValueError:
        try:
            number = float(low)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite number")
    if kind is int and isinstance(number, float):
        raise ValueError(f"{text!r} is not a whole number")
    return number


def parse_value(text: str, kind: type = float) -> bool | int | float | list[int | float]:
    """Parse a field: one value, or comma-separated numbers (a gradient over the layers).

    Raises:
        ValueError: the text is not a value of `kind`, or a gradient is not all numbers.
    """
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise ValueError("the value is empty")
    if any(not p for p in parts):
        raise ValueError(f"{text!r} has an empty entry")
    values = [_scalar(p, float if kind is bool and len(parts) > 1 else kind) for p in parts]
    if len(values) == 1:
        return values[0]
    return values  # type: ignore[return-value]


def format_value(value: Any) -> str:
    """A setting as the form shows it: `0.5`, `true`, or `0, 0.5, 1` for a gradient."""
    if isinstance(value, list):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _plain(value: Any) -> bool:
    """Whether a setting is a number, a bool, or a list of numbers: what a form field holds."""
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return isinstance(value, (bool, int, float))


def _shared_from_setting(setting: Any) -> SharedValue | None:
    """The form texts of a shared setting, or None when filters other than self_attn/mlp are used."""
    if isinstance(setting, ConditionalValue):
        setting = [setting]
    if isinstance(setting, list) and setting and all(isinstance(e, ConditionalValue) for e in setting):
        texts: dict[str, str] = {}
        for i, entry in enumerate(setting):
            key = "" if entry.filter in (None, "*") else entry.filter
            if key not in ("", *FILTERS) or key in texts or not _plain(entry.value):
                return None
            if key == "" and i != len(setting) - 1:
                return None  # a default before a filter would shadow it
            texts[key] = format_value(entry.value)
        return SharedValue(texts.get("", ""), texts.get("self_attn", ""), texts.get("mlp", ""))
    return SharedValue(format_value(setting)) if _plain(setting) else None


def _setting_from_shared(value: SharedValue, kind: type) -> Any:
    entries: list[dict[str, Any]] = [
        {"filter": name, "value": parse_value(getattr(value, name), kind)}
        for name in FILTERS
        if getattr(value, name).strip()
    ]
    if not entries:
        return parse_value(value.default, kind)
    if value.default.strip():
        entries.append({"value": parse_value(value.default, kind)})
    return entries


_RANGE_LINE = re.compile(
    r"^\s*(?P<model>[^\s:]+)\s*[:\s]\s*\[?\s*(?P<start>\d+)\s*(?:-|,|\.\.)\s*(?P<end>\d+)\s*\]?\s*$"
)


def _parse_layer_ranges(text: str) -> tuple[list[tuple[str, int, int]], list[str]]:
    """Parse `org/model START-END` lines (also `org/model [START, END]`); returns ranges and problems."""
    ranges, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        match = _RANGE_LINE.match(line)
        if not match:
            problems.append(f"Layer ranges, line {number}: write `org/model START-END`, e.g. `org/model 0-16`.")
            continue
        ranges.append((match["model"], int(match["start"]), int(match["end"])))
    return ranges, problems


def _form_dict(form: Form) -> tuple[dict[str, Any], list[str]]:
    """The recipe (as a dict) the form describes, and the fields that were left out as invalid."""
    spec = get_method(form.method)
    problems: list[str] = []
    data: dict[str, Any] = {"merge_method": form.method}
    base = form.base.strip()
    if base:
        data["base_model"] = base
    ranges, range_problems = _parse_layer_ranges(form.layer_ranges) if spec.stacks_layers else ([], [])
    problems += range_problems
    if ranges:
        data["slices"] = [{"sources": [{"model": m, "layer_range": [a, b]}]} for m, a, b in ranges]
    else:
        entries: list[dict[str, Any]] = []
        for i, model in enumerate(form.models):
            if not model or not model.strip():
                continue
            texts = form.params_of(i)
            values = {}
            for p in model_specs(spec):
                text = texts.get(p.name, "")
                if text.strip():
                    try:
                        values[p.name] = parse_value(text, p.type)
                    except ValueError as e:
                        problems.append(f"Model {i + 1}, `{p.name}`: {e}; left out.")
            entries.append({"model": model.strip(), **({"parameters": values} if values else {})})
        if base and form.base_position is not None:
            entries.insert(min(form.base_position, len(entries)), {"model": base})
        data["models"] = entries
    shared = {}
    for p in shared_specs(spec):
        value = form.shared.get(p.name)
        if value is None or value.is_empty():
            continue
        try:
            shared[p.name] = _setting_from_shared(value, p.type)
        except ValueError as e:
            problems.append(f"`{p.name}`: {e}; left out.")
    if shared:
        data["parameters"] = shared
    if form.dtype:
        data["dtype"] = form.dtype
    return data, problems


class _Root(dict):
    """The recipe's top-level mapping: always written in block style."""


class _Dumper(yaml.SafeDumper):
    """YAML in the style of mergekit examples: short lists and parameter maps on one line."""


def _flat(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str)) and not (
        isinstance(value, str) and ("\n" in value or len(value) > 60)
    )


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    return dumper.represent_sequence(
        "tag:yaml.org,2002:seq", data, flow_style=bool(data) and all(_flat(v) for v in data)
    )


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    flow = bool(data) and all(_flat(v) or (isinstance(v, list) and all(_flat(x) for x in v)) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _represent_root(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=False)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(_Root, _represent_root)
_Dumper.add_representer(str, _represent_str)


def _dump(data: Mapping[str, Any]) -> str:
    return yaml.dump(_Root(data), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def recipe_extras(text: str) -> tuple[dict[str, Any], int | None]:
    """The top-level keys of a recipe text that the form does not show, and where its base sits in `models:`."""
    if not text.strip():
        return {}, None
    try:
        data = safe_yaml.load(text, max_bytes=MAX_RECIPE_BYTES)
    except (RecipeError, yaml.YAMLError):
        return {}, None
    if not isinstance(data, dict):
        return {}, None
    extras = {k: v for k, v in data.items() if k not in _FORM_KEYS}
    position = None
    base, models = data.get("base_model"), data.get("models")
    if isinstance(models, list):
        for i, entry in enumerate(models):
            if isinstance(entry, dict) and entry.get("model") == base and not entry.get("parameters"):
                position = i
                break
    return extras, position


def form_to_yaml(form: Form, previous: str = "") -> tuple[str, list[str]]:
    """The recipe YAML of a form, keeping the keys of `previous` that the form does not show.

    Returns the text and the problems found in the fields (invalid values are left out).
    """
    data, problems = _form_dict(form)
    extras, _ = recipe_extras(previous)
    data.update(extras)
    return _dump(data), problems


def recipe_to_form(recipe: Recipe) -> tuple[Form, list[str]]:
    """The form of a recipe, and what the form cannot show (then the YAML alone says what is merged).

    Raises:
        UnknownMethodError: the recipe's method is not registered.
    """
    spec = get_method(recipe.merge_method)
    problems: list[str] = []
    form = Form(method=spec.name, base=str(recipe.base_model or ""), dtype=recipe.dtype or "")
    per_model = {p.name: p for p in model_specs(spec)}
    if recipe.modules:
        problems.append("`modules:` (each module's models and slices)")
    if recipe.slices:
        if not spec.stacks_layers:
            problems.append("`slices:` (the form shows `models:` for this method)")
        lines = []
        for i, out_slice in enumerate(recipe.slices):
            source = out_slice.sources[0]
            if len(out_slice.sources) != 1 or out_slice.parameters or out_slice.base_model or source.parameters:
                problems.append(f"slice {i + 1} (only one source without parameters fits the form)")
            lines.append(f"{source.model} {source.layer_range[0]}-{source.layer_range[1]}")
        form.layer_ranges = "\n".join(lines)
    for i, entry in enumerate(recipe.models or []):
        is_base = recipe.base_model is not None and entry.model == recipe.base_model
        if is_base and not entry.parameters and form.base_position is None:
            form.base_position = i
            continue
        texts = {}
        for name, setting in (entry.parameters or {}).items():
            if name not in per_model or not _plain(setting):
                problems.append(f"`{name}` of {entry.model}")
                continue
            texts[name] = format_value(setting)
        form.models.append(str(entry.model))
        form.model_params.append(texts)
    for name, setting in (recipe.parameters or {}).items():
        param = spec.param(name)
        value = _shared_from_setting(setting) if param is not None and param.scope == "shared" else None
        if value is None:
            problems.append(f"`parameters.{name}`")
            continue
        form.shared[name] = value
    if len(form.models) > MAX_MODELS:
        problems.append(f"more than {MAX_MODELS} models")
        del form.models[MAX_MODELS:], form.model_params[MAX_MODELS:]
    return form, problems


def yaml_to_form(text: str) -> tuple[Form, list[str]]:
    """Parse recipe text (with the Space's limits) into a form; see `recipe_to_form`.

    Raises:
        MergehubError: the text is not a recipe this Space accepts.
    """
    return recipe_to_form(check_recipe_text(text))


def form_with_method(form: Form, method: str) -> Form:
    """The same models under another method, keeping the parameter values the new method also has."""
    spec = get_method(method)
    model_names = {p.name for p in model_specs(spec)}
    shared_names = {p.name for p in shared_specs(spec)}
    return Form(
        method=spec.name,
        base=form.base,
        models=list(form.models),
        model_params=[{k: v for k, v in params.items() if k in model_names} for params in form.model_params],
        shared={k: v for k, v in form.shared.items() if k in shared_names},
        layer_ranges=form.layer_ranges if spec.stacks_layers else "",
        dtype=form.dtype,
        base_position=form.base_position,
    )


def _comment_start(line: str) -> int | None:
    """Where a YAML comment starts in `line` (a `#` at the start or after a space, outside quotes), if any."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"" and (i == 0 or line[i - 1] in " :[{,-"):
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return i
    return None


def comments(text: str) -> tuple[str, list[int]]:
    """A recipe's leading comment block (kept when the form rewrites the recipe), and the line numbers of the other
    comments (which a rewrite would lose)."""
    lines = text.splitlines()
    head = 0
    while head < len(lines) and (not lines[head].strip() or lines[head].lstrip().startswith("#")):
        head += 1
    header = "\n".join(lines[:head]).strip("\n")
    rest = [n + 1 for n, line in enumerate(lines) if n >= head and _comment_start(line) is not None]
    return (header + "\n" if header and "#" in header else ""), rest
