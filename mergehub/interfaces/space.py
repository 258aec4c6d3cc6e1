"""The Gradio Space: sign in with Hugging Face, build a recipe from a form or YAML, merge, and push.

Two layers live here:

- pure helpers, usable without gradio: the safety checks on what a visitor may ask for
  (`check_hub_reference`, `check_recipe_text`, `check_repo_name`), the error scrubber
  (`scrub`, `user_message`), the form <-> recipe mapping (`Form`, `form_to_yaml`,
  `recipe_to_form`), the presets and the model summaries of the compatibility table;
- the UI (`build_app`), the only place in mergehub that imports gradio (the `space` extra).

The visitor's OAuth token goes only to mergehub and huggingface_hub calls: it is never logged,
stored beyond the request, shown, or left in an error message. Without a sign-in, reads are
anonymous (`token=False`), so the Space never lends its own credentials to a visitor.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import queue
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergehub import api
from mergehub.errors import Cancelled, MergehubError, ModelReferenceError, PublishError, RecipeError
from mergehub.methods import MethodSpec, ParamSpec, all_methods, get_method
from mergehub.recipe import ConditionalValue, Recipe, parse_recipe

try:  # the `space` extra; the pure helpers above work without it
    import gradio as gr
except ImportError:  # pragma: no cover - exercised only without the extra
    gr = None  # type: ignore[assignment]

__all__ = [
    "MAX_RECIPE_BYTES",
    "MAX_MODELS",
    "MAX_SLICES",
    "MAX_MERGE_BYTES",
    "PRESETS",
    "Form",
    "SharedValue",
    "ModelSummary",
    "Session",
    "check_hub_reference",
    "check_recipe_text",
    "check_repo_name",
    "scrub",
    "user_message",
    "parse_value",
    "format_value",
    "form_to_yaml",
    "recipe_to_form",
    "yaml_to_form",
    "form_with_method",
    "preset_form",
    "default_repo_name",
    "summarize_model",
    "compatibility_markdown",
    "inspect_model",
    "layer_count",
    "check_models",
    "dry_run",
    "search_models",
    "lineage_markdown",
    "estimate_gpu_seconds",
    "merge",
    "build_app",
]

logger = logging.getLogger(__name__)

MAX_RECIPE_BYTES = 20_000
"""The largest recipe the Space accepts, in UTF-8 bytes."""
MAX_MODELS = 8
"""The most distinct models one recipe may reference."""
MAX_SLICES = 64
"""The most `slices:` entries one recipe may have."""
MAX_MERGE_BYTES = 400 * 10**9
"""The most bytes one merge may read and write together (eight 20B models in bfloat16 and their merge fit)."""
FILTERS = ("self_attn", "mlp")
"""The tensor-name filters the form offers per shared parameter."""
EXAMPLE_MODELS = (
    "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen/Qwen2.5-Coder-0.5B",
    "Qwen/Qwen2.5-Coder-0.5B-Instruct",
)
"""Models of one architecture (24 layers) that fill a preset when the form has too few."""
EXAMPLE_LAYERS = 24
PRESETS = ("SLERP of two models", "TIES of three models", "DARE-TIES", "Passthrough frankenmerge")

_FORM_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype")
_DTYPES = ("", "bfloat16", "float16", "float32", "float64")
_DTYPE_CHOICES = [("as stored", ""), *((d, d) for d in _DTYPES[1:])]

# -- safety: what a visitor may ask the server to do ---------------------------------------------

_HUB_PART = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}$", re.ASCII)
_REVISION = re.compile(r"^[\w.\-/]{1,128}$", re.ASCII)


def check_hub_reference(text: str) -> str:
    """Return `text` stripped if it is a Hub model reference, `org/name` or `org/name@revision`.

    Pure: no file system, no network. Local paths, `..`, absolute paths, `~`, URLs and `file:`
    references are refused, so a recipe can only ever read public Hub repos (or those the
    visitor's own token can read).

    Raises:
        ModelReferenceError: anything else.
    """
    value = text.strip() if isinstance(text, str) else ""
    hint = "Use a Hub model ID like `org/name`, or `org/name@revision` for a branch, tag or commit."
    if not value:
        raise ModelReferenceError("A model reference is empty.", hint=hint)
    shown = value if len(value) <= 80 else value[:77] + "..."
    reasons = []
    if value.startswith(("/", "~", ".", "\\")):
        reasons.append("it looks like a path on the server")
    if ".." in value:
        reasons.append("it contains `..`")
    if ":" in value or "\\" in value:
        reasons.append("it looks like a URL or a file path")
    if any(c.isspace() for c in value) or not value.isprintable():
        reasons.append("it contains spaces or control characters")
    if not reasons:
        path, at, revision = value.partition("@")
        parts = path.split("/")
        if len(parts) != 2 or not all(_HUB_PART.match(p) for p in parts):
            reasons.append("it is not of the form `org/name`")
        elif at and (not _REVISION.match(revision) or revision.startswith(("/", ".")) or revision.endswith("/")):
            reasons.append("its revision is malformed")
    if reasons:
        raise ModelReferenceError(f"Model {shown!r} is not allowed here: {'; '.join(reasons)}.", hint=hint)
    return value


def _tokenizer_references(recipe: Recipe) -> list[str]:
    """Model references hidden in the tokenizer settings (`tokenizer_source`, `tokenizer:`)."""
    found: list[str] = []
    sources = [recipe.tokenizer_source, recipe.tokenizer.source if recipe.tokenizer else None]
    for source in sources:
        if source and source not in ("base", "union"):
            found.append(source.removeprefix("model:"))

    def walk(node: Any, key: str | None = None) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and key == "model":
            found.append(node)

    if recipe.tokenizer and recipe.tokenizer.tokens:
        walk(recipe.tokenizer.tokens)
    return found


def _has_aliases(text: str) -> bool:
    """Whether the YAML uses anchors or aliases (refused: they let a small text expand enormously)."""
    try:
        return any(isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) for event in yaml.parse(text))
    except yaml.YAMLError:
        return False  # parse_recipe reports the syntax error


def check_recipe_text(text: str) -> Recipe:
    """Parse a visitor's recipe and enforce the Space's limits: size, model count, Hub references only.

    Raises:
        RecipeError: too large, too many models or slices, YAML aliases, or an invalid recipe.
        ModelReferenceError: a model reference is not a Hub ID.
    """
    size = len(text.encode("utf-8"))
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"The recipe is {size:,} bytes; this Space accepts at most {MAX_RECIPE_BYTES:,}.",
            hint="Shorten it, or run `mergehub merge` on your own machine for larger recipes.",
        )
    if _has_aliases(text):
        raise RecipeError("The recipe uses YAML anchors or aliases (`&`, `*`).", hint="Write the values out in full.")
    recipe = parse_recipe(text)
    refs = recipe.referenced_models()
    if len(refs) > MAX_MODELS:
        raise RecipeError(
            f"The recipe names {len(refs)} models; this Space merges at most {MAX_MODELS}.",
            hint="Merge in stages: merge some models first, then merge the result with the others.",
        )
    if len(recipe.slices or []) > MAX_SLICES:
        raise RecipeError(
            f"The recipe has {len(recipe.slices or [])} slices; this Space allows at most {MAX_SLICES}.",
            hint="Use fewer, longer layer ranges.",
        )
    for ref in refs:
        check_hub_reference(str(ref))
    for ref in _tokenizer_references(recipe):
        check_hub_reference(ref)
    return recipe


def _refuse_local_shadows(recipe: Recipe) -> None:
    """Refuse references that also name a folder on the server: mergehub would read the folder."""
    for ref in recipe.referenced_models():
        if Path(ref.path).exists():
            raise ModelReferenceError(f"Model {str(ref)!r} is not allowed here.", hint="Use another Hub model ID.")


_REPO_NAME = re.compile(r"^[A-Za-z0-9](?:[\w.\-]{0,94}[A-Za-z0-9])?$", re.ASCII)


def check_repo_name(text: str) -> str:
    """Return the output repo, `name` (in the visitor's namespace) or `namespace/name`, if well formed.

    Raises:
        PublishError: the name is empty or not a valid Hub repo name.
    """
    value = (text or "").strip()
    parts = value.split("/")
    if not value or len(parts) > 2 or not all(_REPO_NAME.match(p) and "--" not in p and ".." not in p for p in parts):
        raise PublishError(
            f"{value[:80]!r} is not a valid repo name." if value else "The output repo name is empty.",
            hint="Use letters, digits, `-`, `_` and `.` (at most 96), like `my-merge` or `you/my-merge`.",
        )
    return value


# -- errors: what a visitor may see ---------------------------------------------------------------

_TOKEN_PATTERNS = (
    re.compile(r"\bhf_(?:oauth_)?[A-Za-z0-9]{16,}\b"),
    re.compile(r"\bapi_org_[A-Za-z0-9]{16,}\b"),
    re.compile(r"(?i)\b(bearer|token)([=:\s]+)[A-Za-z0-9._\-]{16,}"),
)
_FILE_URL = re.compile(r"\bfile:\S+")
_HOME_PATH = re.compile(r"(?<![\w/])~/\S*")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~\-])/(?:[\w.\-+@%=~]+/?)+")
_PATH_SHOWN = "<server path>"


def scrub(text: str, secrets: Sequence[str | None] = ()) -> str:
    """Remove what a visitor must never see: tokens (`hf_...`, the session's own) and server paths."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _TOKEN_PATTERNS[0].sub("hf_***", text)
    text = _TOKEN_PATTERNS[1].sub("api_org_***", text)
    text = _TOKEN_PATTERNS[2].sub(lambda m: f"{m[1]}{m[2]}***", text)
    text = _FILE_URL.sub(_PATH_SHOWN, text)
    text = _HOME_PATH.sub(_PATH_SHOWN, text)
    return _ABSOLUTE_PATH.sub(_PATH_SHOWN, text)


def user_message(error: BaseException, secrets: Sequence[str | None] = ()) -> str:
    """What the page shows for an error: mergehub's message and hint, scrubbed; nothing else leaks."""
    if isinstance(error, MergehubError):
        text = error.message + (f"\nHint: {error.hint}" if error.hint else "")
    else:
        text = f"The server failed unexpectedly ({type(error).__name__}). Try again; if it keeps failing, report it."
    return scrub(text, secrets)


# -- the form and its recipe ----------------------------------------------------------------------


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


def _shared_specs(spec: MethodSpec) -> list[ParamSpec]:
    return [p for p in spec.params if p.scope == "shared"]


def _model_specs(spec: MethodSpec) -> list[ParamSpec]:
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
            for p in _model_specs(spec):
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
    for p in _shared_specs(spec):
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


def _extras(text: str) -> tuple[dict[str, Any], int | None]:
    """The top-level keys of a recipe text that the form does not show, and where its base sits in `models:`."""
    if not text.strip() or len(text.encode("utf-8")) > MAX_RECIPE_BYTES or _has_aliases(text):
        return {}, None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
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
    extras, _ = _extras(previous)
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
    per_model = {p.name: p for p in _model_specs(spec)}
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
    model_names = {p.name for p in _model_specs(spec)}
    shared_names = {p.name for p in _shared_specs(spec)}
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


def _pick_models(models: Sequence[str], count: int) -> list[str]:
    picked = list(dict.fromkeys(m.strip() for m in models if m and m.strip()))
    for example in EXAMPLE_MODELS:
        if len(picked) >= count:
            break
        if example not in picked:
            picked.append(example)
    return picked[:count]


def preset_form(name: str, models: Sequence[str] = (), layers: int = EXAMPLE_LAYERS) -> Form:
    """A preset recipe as a form, on the given models (base first), topped up with example models.

    Raises:
        RecipeError: `name` is not one of `PRESETS`.
    """
    if name == "SLERP of two models":
        base, other = _pick_models(models, 2)
        return Form(
            method="slerp",
            base=base,
            models=[other],
            model_params=[{}],
            shared={"t": SharedValue("0.5", "0, 0.5, 0.3, 0.7, 1", "1, 0.5, 0.7, 0.3, 0")},
            dtype="bfloat16",
        )
    if name == "TIES of three models":
        base, *others = _pick_models(models, 4)
        weights = ("0.5", "0.3", "0.2")
        return Form(
            method="ties",
            base=base,
            models=others,
            model_params=[{"weight": w, "density": "0.5"} for w in weights[: len(others)]],
            shared={"normalize": SharedValue("true")},
            dtype="bfloat16",
        )
    if name == "DARE-TIES":
        base, *others = _pick_models(models, 3)
        return Form(
            method="dare_ties",
            base=base,
            models=others,
            model_params=[{"weight": "0.5", "density": "0.53"} for _ in others],
            dtype="bfloat16",
        )
    if name == "Passthrough frankenmerge":
        given = [m.strip() for m in models if m and m.strip()]
        first, second = given * 2 if len(given) == 1 else _pick_models(given, 2)
        layers = max(int(layers), 3)
        cut_low, cut_high = layers // 3, layers - layers // 3
        return Form(
            method="passthrough",
            layer_ranges=f"{first} 0-{cut_high}\n{second} {cut_low}-{layers}",
            dtype="bfloat16",
        )
    raise RecipeError(f"Unknown preset {name!r}.", hint=f"Use one of: {', '.join(PRESETS)}.")


def default_repo_name(method: str, models: Sequence[str]) -> str:
    """A repo name from the method and the models' names, e.g. `Qwen2.5-0.5B-Qwen2.5-0.5B-Instruct-slerp`."""
    names = list(dict.fromkeys(m.split("@")[0].rstrip("/").rsplit("/", 1)[-1] for m in models if m and m.strip()))
    suffix = method.replace("_", "-")
    stem = "-".join(names) or "merged"
    if len(stem) + len(suffix) + 1 > 96:
        stem = f"{names[0][:60]}-and-{len(names) - 1}-more" if names else "merged"
    name = re.sub(r"[^\w.\-]+", "-", f"{stem}-{suffix}")
    name = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", name))
    return name[:96].strip("-._") or "merged"


# -- models: what the compatibility table shows ---------------------------------------------------

_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
_VOCAB_KEYS = ("vocab_size", "padded_vocab_size")


@dataclass(frozen=True)
class ModelSummary:
    """A model as the compatibility table shows it, from its config, safetensors headers and card."""

    ref: str
    architecture: str
    layers: int | None
    hidden: int | None
    vocab: int | None
    dtype: str
    parameters: int
    nbytes: int
    license: str


def _config_value(config: Mapping[str, Any], keys: Sequence[str]) -> int | None:
    for source in (config, config.get("text_config") or {}):
        for key in keys:
            if isinstance(source.get(key), int):
                return source[key]
    return None


def _card_license(readme: bytes | None) -> str:
    if not readme:
        return "?"
    text = readme.decode("utf-8", errors="replace")
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.S)
    if not match:
        return "?"
    try:
        meta = yaml.safe_load(match[1])
    except yaml.YAMLError:
        return "?"
    if not isinstance(meta, dict) or not meta.get("license"):
        return "?"
    license_ = str(meta["license"])
    return str(meta.get("license_name") or license_) if license_ == "other" else license_


def summarize_model(
    ref: str, config: Mapping[str, Any], tensors: Mapping[str, Any], readme: bytes | None
) -> ModelSummary:
    """Summarize a model from its config, its tensors (anything with `dtype`, `shape`, `nbytes`) and its README."""
    by_dtype: Counter[str] = Counter()
    parameters = nbytes = 0
    for info in tensors.values():
        parameters += math.prod(info.shape)
        nbytes += info.nbytes
        by_dtype[info.dtype] += info.nbytes
    architectures = config.get("architectures") or []
    return ModelSummary(
        ref=ref,
        architecture=str(architectures[0] if architectures else config.get("model_type", "?")),
        layers=_config_value(config, _LAYER_KEYS),
        hidden=_config_value(config, _HIDDEN_KEYS),
        vocab=_config_value(config, _VOCAB_KEYS),
        dtype=by_dtype.most_common(1)[0][0] if by_dtype else "?",
        parameters=parameters,
        nbytes=nbytes,
        license=_card_license(readme),
    )


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1000
    return ""


def compatibility_markdown(summaries: Sequence[ModelSummary], errors: Mapping[str, str] | None = None) -> str:
    """A Markdown table of the models, marking every figure that differs from the first model's."""
    errors = dict(errors or {})
    if not summaries and not errors:
        return "No models yet: pick models, then check them."
    columns = ("architecture", "layers", "hidden", "vocab", "dtype")
    lines = [
        "| model | architecture | layers | hidden | vocab | dtype | parameters | size | license |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    first = summaries[0] if summaries else None
    differ: set[str] = set()
    for s in summaries:
        cells = []
        for column in columns:
            value = getattr(s, column)
            mark = first is not None and value != getattr(first, column)
            differ |= {column} if mark else set()
            cells.append(f"{'⚠️ ' if mark else ''}{value if value is not None else '?'}")
        lines.append(
            f"| `{s.ref}` | " + " | ".join(cells) + f" | {_count(s.parameters)} | {_size(s.nbytes)} | {s.license} |"
        )
    for ref, message in errors.items():
        lines.append(f"| `{ref}` | ❌ {message.splitlines()[0]} |  |  |  |  |  |  |  |")
    if errors:
        verdict = "❌ Some models cannot be read; see the table."
    elif len(summaries) < 2:
        verdict = "One model: nothing to compare."
    elif differ & {"architecture", "hidden", "vocab"}:
        verdict = f"⚠️ The models differ in {', '.join(sorted(differ))}: a tensor-by-tensor merge will likely fail."
    elif "layers" in differ:
        verdict = "⚠️ The layer counts differ: merge matching layer ranges, or stack layers with passthrough."
    else:
        verdict = "✅ Same architecture, layers, hidden size and vocabulary: they can be merged tensor by tensor."
    licenses = {s.license for s in summaries}
    if len(licenses) > 1:
        verdict += " Their licenses differ: check that the merged model may be shared."
    return "\n".join(lines) + "\n\n" + verdict


def _read_token(oauth_token: Any) -> str | bool:
    """The visitor's token, or False: never fall back to the Space's own credentials."""
    token = getattr(oauth_token, "token", None)
    return token if isinstance(token, str) and token else False


def _open_model(ref: str, token: str | bool) -> Any:
    """A Hub model as a mergehub tensor source (a Hub reference only; `token=False` reads anonymously)."""
    return api.open_model(check_hub_reference(ref), token=token)


def inspect_model(ref: str, token: str | bool) -> ModelSummary:
    """Summarize a Hub model from configs and safetensors headers only (no weights are read)."""
    source = _open_model(ref, token)
    try:
        return summarize_model(source.label, source.config(), source.tensors(), source.read_file("README.md"))
    finally:
        source.close()


def layer_count(ref: str, token: str | bool) -> int | None:
    """A Hub model's layer count from its config.json, or None when it cannot be read."""
    try:
        source = _open_model(ref, token)
        try:
            return _config_value(source.config(), _LAYER_KEYS)
        finally:
            source.close()
    except Exception:  # noqa: BLE001 - the caller falls back to a default
        return None


def check_models(recipe_text: str, token: str | bool) -> str:
    """The compatibility table of every model the recipe names."""
    secrets = [token] if isinstance(token, str) else []
    try:
        recipe = check_recipe_text(recipe_text)
        _refuse_local_shadows(recipe)
    except MergehubError as e:
        return "❌ " + user_message(e, secrets)
    summaries, errors = [], {}
    for ref in recipe.referenced_models():
        try:
            summaries.append(inspect_model(str(ref), token))
        except Exception as e:  # noqa: BLE001 - each model's failure is shown in its row
            errors[str(ref)] = user_message(e, secrets)
    return compatibility_markdown(summaries, errors)


def dry_run(recipe_text: str, token: str | bool, max_lines: int = 120) -> str:
    """The plan of the recipe (`--dry-run`), from configs and headers only."""
    secrets = [token] if isinstance(token, str) else []
    try:
        recipe = check_recipe_text(recipe_text)
        _refuse_local_shadows(recipe)
        plan = api.plan_merge(recipe, token=token)
    except Exception as e:  # noqa: BLE001 - shown to the visitor, scrubbed
        return "Plan failed:\n" + user_message(e, secrets)
    lines = plan.describe().splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... {len(lines) - max_lines} more lines"]
    return scrub("\n".join(lines + ["Plan OK: no problems found."]), secrets)


def search_models(query: str, token: str | bool = False, limit: int = 20) -> list[str]:
    """Hub model IDs matching `query` (most downloaded first); empty on any failure."""
    query = (query or "").strip()
    if len(query) < 2 or len(query) > 96:
        return []
    try:
        from huggingface_hub import HfApi

        return [m.id for m in HfApi(token=token).list_models(search=query, limit=limit, sort="downloads")]
    except Exception:  # noqa: BLE001 - search is a convenience; typing an ID still works
        return []


def lineage_markdown(model_id: str, token: str | bool) -> str:
    """The family tree of a Hub model: a Mermaid diagram and a text tree, when mergehub has lineage support."""
    secrets = [token] if isinstance(token, str) else []
    try:
        ref = check_hub_reference(model_id)
    except MergehubError as e:
        return "❌ " + user_message(e, secrets)
    try:
        graph = api.lineage(ref.partition("@")[0], token=token)
    except Exception as e:  # noqa: BLE001 - shown to the visitor, scrubbed
        return "❌ " + user_message(e, secrets)
    return scrub(f"```mermaid\n{graph.to_mermaid()}\n```\n\n```text\n{graph.to_tree()}\n```", secrets)


# -- the merge job ---------------------------------------------------------------------------------


@dataclass
class Session:
    """One browser session's jobs (kept in a `gr.State`): job numbers, cancellations, the running job's marker.

    A job runs while its marker file exists; Cancel deletes it, and the merge stops before its next
    tensor. A file rather than an Event, so that the stop also reaches a ZeroGPU worker process.
    """

    job: int = 0
    started: int = 0
    cancelled: int = 0
    alive: str | None = None

    def arm(self) -> int:
        """Number the next job (when Merge is clicked, before the job waits in the queue)."""
        self.job += 1
        return self.job

    def begin(self) -> int:
        """Start the armed job (arming one if none is waiting); returns its number."""
        if self.job <= self.started:
            self.arm()
        self.started = self.job
        return self.job

    def cancel(self) -> bool:
        """Cancel the running or waiting job; returns whether one was running."""
        self.cancelled = self.job
        alive, self.alive = self.alive, None
        if alive is None:
            return False
        Path(alive).unlink(missing_ok=True)
        return True

    def is_cancelled(self, job: int) -> bool:
        """Whether job number `job` was cancelled."""
        return self.cancelled >= job


def estimate_gpu_seconds(nbytes: int) -> int:
    """GPU seconds to ask ZeroGPU for a merge that reads and writes `nbytes` (at ~100 MB/s, with margin)."""
    return int(min(3600, max(60, 30 + 1.5 * nbytes / 100e6)))


def _merge_stream(
    recipe_path: str, repo_id: str, private: bool, token: str, device: str, alive_path: str, nbytes: int
) -> Iterator[tuple[str, Any]]:
    """Run `push_merge` in a thread, yielding ("progress", Progress) and ("tick", None) every 0.25 s until
    ("done", info) or ("error", info).

    Arguments are plain values so that ZeroGPU can run this in its GPU worker. The merge stops
    when `alive_path` disappears (Cancel) or when this generator is closed.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    closed = threading.Event()

    def should_stop() -> bool:
        return closed.is_set() or not Path(alive_path).exists()

    def work() -> None:
        try:
            result, pushed = api.push_merge(
                recipe_path,
                repo_id,
                token=token,
                private=private,
                device=device,
                on_progress=lambda p: events.put(("progress", p)),
                should_stop=should_stop,
            )
            events.put(
                (
                    "done",
                    {
                        "repo_id": pushed.repo_id,
                        "commit_sha": pushed.commit_sha,
                        "commit_url": pushed.commit_url,
                        "created": pushed.created,
                        "summary": result.summary(),
                    },
                )
            )
        except BaseException as e:  # noqa: BLE001 - every failure becomes a scrubbed message
            cancelled = should_stop() and isinstance(e, Cancelled)
            if not isinstance(e, MergehubError):
                logger.error("merge job failed: %s: %s", type(e).__name__, scrub(str(e), [token]))
            events.put(("error", {"message": user_message(e, [token]), "cancelled": cancelled}))

    thread = threading.Thread(target=work, name="mergehub-space-job", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, payload = events.get(timeout=0.25)
            except queue.Empty:
                yield "tick", None
                continue
            yield kind, payload
            if kind in ("done", "error"):
                return
    finally:
        closed.set()  # the page went away: stop merging (the repo this job created is deleted)


def _job_runner() -> Callable[..., Iterator[tuple[str, Any]]]:
    """`_merge_stream`, wrapped for ZeroGPU when the `spaces` package is there (effect-free elsewhere)."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return _merge_stream

    def duration(
        recipe_path: str, repo_id: str, private: bool, token: str, device: str, alive_path: str, nbytes: int
    ) -> int:
        return estimate_gpu_seconds(nbytes)

    return spaces.GPU(duration=duration)(_merge_stream)


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def _progress_line(p: Any, elapsed: float) -> str:
    rate = p.bytes_read / max(elapsed, 1e-6)
    eta = (p.bytes_total - p.bytes_read) / rate if rate > 0 else float("inf")
    return (
        f"tensors {p.tensors_done}/{p.tensors_total} · read {_size(p.bytes_read)} of {_size(p.bytes_total)} · "
        f"{_size(rate)}/s · ETA {_eta(eta) if math.isfinite(eta) else '?'}"
    )


def _repo_url(repo_id: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/{repo_id}"


def _read_card(repo_id: str, revision: str, token: str, directory: Path) -> str:
    """The README.md of the pushed commit, or a note when there is none."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id, "README.md", revision=revision, token=token, local_dir=directory / "card")
        return Path(path).read_text(encoding="utf-8")
    except Exception:  # noqa: BLE001 - the card is a bonus; the merge is done
        return "*This merge has no model card yet.*"


def _render_card(text: str) -> str:
    """Show a card's YAML metadata as a code block, then its body."""
    match = re.match(r"\A---\s*\n(.*?)\n---\s*\n?", text, re.S)
    if not match:
        return text
    return f"```yaml\n{match[1]}\n```\n\n{text[match.end() :]}"


def merge(
    recipe_text: str,
    repo_name: str,
    private: bool,
    session: Session | None,
    oauth_token: Any,
    progress: Any = None,
    *,
    runner: Callable[..., Iterator[tuple[str, Any]]] = _merge_stream,
    device: str = "auto",
    refresh_seconds: float = 0.3,
) -> Iterator[tuple[str, str, str]]:
    """The Merge button: check, plan, merge and push, yielding (status, log, model card) as it goes.

    The last log line of a successful merge is the link to the new repo. Errors show mergehub's
    message and hint, scrubbed of tokens and server paths.
    """
    if oauth_token is None or not _read_token(oauth_token):
        yield (
            "🔒 **Sign in with Hugging Face to merge**: the model is pushed to your account. "
            "Checks and the dry run work without signing in.",
            "",
            "",
        )
        return
    token: str = oauth_token.token
    session = session if session is not None else Session()
    job = session.begin()
    log: list[str] = []

    def out(status: str, card: str = "", live: str = "") -> tuple[str, str, str]:
        return scrub(status, [token]), scrub("\n".join(log + ([live] if live else [])), [token]), card

    if session.is_cancelled(job):
        log.append("Cancelled before it started.")
        yield out("⏹️ Cancelled: nothing was pushed.")
        return
    scratch = Path(tempfile.mkdtemp(prefix="mergehub-space-"))
    alive = scratch / "alive"
    alive.touch()
    session.alive = str(alive)
    try:
        recipe = check_recipe_text(recipe_text)
        _refuse_local_shadows(recipe)
        repo_id = check_repo_name(repo_name)
        log.append(f"Checking {len(recipe.referenced_models())} model(s) from their configs and headers...")
        yield out("⏳ Planning...")
        plan = api.plan_merge(recipe, token=token)
        log.append(
            f"Plan: {plan.method} merge into {len(plan.jobs)} tensors; "
            f"read {_size(plan.read_bytes)}, write {_size(plan.write_bytes)}."
        )
        log += [f"Warning: {w}" for w in plan.warnings]
        if plan.read_bytes + plan.write_bytes > MAX_MERGE_BYTES:
            raise RecipeError(
                f"This merge reads and writes {_size(plan.read_bytes + plan.write_bytes)}; "
                f"this Space merges at most {_size(MAX_MERGE_BYTES)} at a time.",
                hint="Run `mergehub merge --push` on your own machine for merges this large.",
            )
        recipe_path = scratch / "recipe.yml"
        recipe_path.write_text(recipe_text, encoding="utf-8")
        log.append(f"Merging into {repo_id} ({'private' if private else 'public'}); shards upload as they are written.")
        yield out("⏳ Merging...")
        started = last = time.monotonic()
        live = ""
        for kind, payload in runner(
            str(recipe_path), repo_id, bool(private), token, device, str(alive), plan.read_bytes + plan.write_bytes
        ):
            if kind == "progress":
                live = _progress_line(payload, time.monotonic() - started)
                if progress is not None:
                    progress((payload.tensors_done, payload.tensors_total), desc="merging", unit="tensors")
                if payload.tensors_done == payload.tensors_total:
                    log.append(live)
                    live = "Committing to the Hub..."
            elif kind == "error":
                if payload["cancelled"]:
                    if live:
                        log.append(live)
                    log.append("Cancelled: nothing was pushed, and a repo created for this merge was deleted.")
                    yield out("⏹️ Cancelled: nothing was pushed.")
                else:
                    log.append("Failed: " + payload["message"])
                    yield out("❌ " + payload["message"].replace("\n", "  \n"))
                return
            elif kind == "done":
                url = _repo_url(payload["repo_id"])
                log.append(payload["summary"].splitlines()[0].split(" -> ")[0])
                log.append(f"Pushed commit {payload['commit_sha'][:10]}: {url}")
                card = _render_card(_read_card(payload["repo_id"], payload["commit_sha"], token, scratch)).replace(
                    token, "***"
                )
                yield out(f"✅ Pushed to [{payload['repo_id']}]({url})", card)
                return
            now = time.monotonic()
            if now - last >= refresh_seconds:
                last = now
                if session.is_cancelled(job):
                    alive.unlink(missing_ok=True)
                yield out("⏳ Merging...", live=live)
    except MergehubError as e:
        message = user_message(e, [token])
        log.append("Failed: " + message)
        yield out("❌ " + message.replace("\n", "  \n"))
    except Exception as e:  # noqa: BLE001 - anything else: a generic message, details only in the server log
        logger.error("merge failed: %s: %s", type(e).__name__, scrub(str(e), [token]))
        message = user_message(e, [token])
        log.append("Failed: " + message)
        yield out("❌ " + message)
    finally:
        if session.alive == str(alive):
            session.alive = None
        shutil.rmtree(scratch, ignore_errors=True)


# -- the page ----------------------------------------------------------------------------------------


def _require_gradio() -> None:
    if gr is None:
        raise ImportError("The Space needs gradio: pip install 'mergehub[space]'")


def _method_choices() -> list[tuple[str, str]]:
    return [(f"{name} — {spec.summary}", name) for name, spec in sorted(all_methods().items())]


def _method_markdown(spec: MethodSpec) -> str:
    base = {
        "required": "a base model is required",
        "optional": "a base model is optional",
        "ignored": "no base model is used",
    }[spec.base]
    inputs = f"{spec.min_inputs}" + (
        "+" if spec.max_inputs is None else "" if spec.max_inputs == spec.min_inputs else f"-{spec.max_inputs}"
    )
    paper = f" · [paper]({spec.paper})" if spec.paper else ""
    stacks = " Layer ranges stack slices of layers into a deeper model." if spec.stacks_layers else ""
    return f"**{spec.name}**: {spec.summary}{paper}  \nMerges {inputs} model(s) per tensor; {base}.{stacks}"


def _param_label(p: ParamSpec) -> str:
    kind = "true/false" if p.type is bool else "number" if p.type in (int, float) else p.type.__name__
    default = "required" if p.required else f"default {format_value(p.default) if p.default is not None else 'none'}"
    return f"{p.name} ({kind}; {default})"


def _base_label(spec: MethodSpec) -> str:
    return {
        "required": "Base model (required)",
        "optional": "Base model (optional)",
        "ignored": "Base model (not used by this method; optional)",
    }[spec.base]


class _FormView:
    """The form's components, and the two maps between them and a `Form`."""

    def __init__(self, model_slots: int, model_fields: int, shared_fields: int) -> None:
        self.model_slots, self.model_fields, self.shared_fields = model_slots, model_fields, shared_fields
        self.method = gr.Dropdown(_method_choices(), value="slerp", label="Merge method", filterable=True)
        self.method_info = gr.Markdown()
        self.base = gr.Dropdown(
            [],
            value="",
            label="Base model",
            allow_custom_value=True,
            filterable=True,
            info="Type to search the Hub, or paste `org/name`.",
        )
        self.count = gr.Slider(1, model_slots, step=1, value=1, label="Models (besides the base)")
        self.rows, self.models, self.params = [], [], []
        for i in range(model_slots):
            with gr.Row(visible=i == 0) as row:
                self.rows.append(row)
                self.models.append(
                    gr.Dropdown([], value="", label=f"Model {i + 1}", allow_custom_value=True, filterable=True, scale=3)
                )
                self.params.append(
                    [
                        gr.Textbox(label=f"param {k + 1}", visible=False, scale=1, min_width=120)
                        for k in range(model_fields)
                    ]
                )
        gr.Markdown(
            "**Parameters for all models**: a number, `true`/`false`, or comma-separated numbers for a gradient "
            "over the layers (e.g. `0, 0.5, 1`). The `self_attn` and `mlp` fields override the value for those tensors."
        )
        self.shared_rows, self.shared = [], []
        for _ in range(shared_fields):
            with gr.Row(visible=False) as row:
                self.shared_rows.append(row)
                self.shared.append([gr.Textbox(label=label, min_width=120) for label in ("value", "self_attn", "mlp")])
        self.ranges = gr.Textbox(
            label="Layer ranges: one slice per line, `org/model START-END` (stacked in order)",
            lines=4,
            visible=False,
            placeholder="org/model 0-16\norg/model 8-24",
        )
        self.dtype = gr.Dropdown(
            _DTYPE_CHOICES, value="", label="dtype (inputs rounded to it; output dtype unless out_dtype is set)"
        )

    @property
    def inputs(self) -> set:
        """Every component whose value the form reads."""
        flat = [self.method, self.base, self.count, self.ranges, self.dtype, *self.models]
        flat += [box for boxes in self.params for box in boxes] + [box for boxes in self.shared for box in boxes]
        return set(flat)

    @property
    def outputs(self) -> list:
        """Every component `render` updates."""
        flat = [
            self.method,
            self.method_info,
            self.base,
            self.count,
            self.ranges,
            self.dtype,
            *self.rows,
            *self.models,
            *self.shared_rows,
        ]
        return flat + [box for boxes in self.params for box in boxes] + [box for boxes in self.shared for box in boxes]

    def collect(self, data: Mapping[Any, Any], base_position: int | None = None) -> Form:
        """The form the components show (`data` maps components to values)."""
        spec = get_method(data[self.method] or "slerp")
        model_specs, shared_specs = _model_specs(spec), _shared_specs(spec)
        count = int(data[self.count] or 1)
        models, params = [], []
        for i in range(count):
            models.append((data[self.models[i]] or "").strip())
            params.append(
                {p.name: str(data[self.params[i][k]] or "") for k, p in enumerate(model_specs[: self.model_fields])}
            )
        shared = {
            p.name: SharedValue(*(str(data[box] or "") for box in self.shared[j]))
            for j, p in enumerate(shared_specs[: self.shared_fields])
        }
        return Form(
            spec.name,
            (data[self.base] or "").strip(),
            models,
            params,
            shared,
            data[self.ranges] or "",
            data[self.dtype] or "",
            base_position,
        )

    def render(self, form: Form) -> dict:
        """Updates that make the components show `form`, with labels and visibility from the method's parameters."""
        spec = get_method(form.method)
        model_specs, shared_specs = _model_specs(spec), _shared_specs(spec)
        count = max(1, min(len(form.models), self.model_slots))
        updates: dict = {
            self.method: gr.update(value=spec.name),
            self.method_info: gr.update(value=_method_markdown(spec)),
            self.base: gr.update(value=form.base, label=_base_label(spec)),
            self.count: gr.update(value=count),
            self.ranges: gr.update(value=form.layer_ranges, visible=spec.stacks_layers),
            self.dtype: gr.update(value=form.dtype if form.dtype in _DTYPES else ""),
        }
        for i in range(self.model_slots):
            updates[self.rows[i]] = gr.update(visible=i < count)
            updates[self.models[i]] = gr.update(value=form.models[i] if i < len(form.models) else "")
            texts = form.params_of(i)
            for k in range(self.model_fields):
                p = model_specs[k] if k < len(model_specs) else None
                updates[self.params[i][k]] = gr.update(
                    value=texts.get(p.name, "") if p else "",
                    label=_param_label(p) if p else "",
                    placeholder="" if p is None or p.required or p.default is None else format_value(p.default),
                    visible=p is not None,
                )
        for j in range(self.shared_fields):
            p = shared_specs[j] if j < len(shared_specs) else None
            value = form.shared.get(p.name, SharedValue()) if p else SharedValue()
            updates[self.shared_rows[j]] = gr.update(visible=p is not None)
            default_box, attn_box, mlp_box = self.shared[j]
            updates[default_box] = gr.update(
                value=value.default,
                label=_param_label(p) if p else "",
                placeholder="" if p is None or p.required or p.default is None else format_value(p.default),
            )
            filters = p is not None and p.type is not bool
            updates[attn_box] = gr.update(
                value=value.self_attn, label=f"{p.name} for self_attn" if p else "", visible=filters
            )
            updates[mlp_box] = gr.update(value=value.mlp, label=f"{p.name} for mlp" if p else "", visible=filters)
        return updates


def _note(problems: Sequence[str], prefix: str) -> str:
    return "" if not problems else f"{prefix}: " + "; ".join(problems)


def _recipe_status(text: str) -> str:
    """The line under the YAML box: valid, or the error and its hint."""
    try:
        check_recipe_text(text)
    except MergehubError as e:
        return "❌ " + user_message(e).replace("\n", "  \n")
    return "✅ Valid recipe."


def build_app() -> Any:
    """Build the Space's `gr.Blocks` (without launching it).

    Raises:
        ImportError: gradio (the `space` extra) is not installed.
    """
    _require_gradio()
    methods = all_methods().values()
    model_fields = max(len(_model_specs(s)) for s in methods)
    shared_fields = max(len(_shared_specs(s)) for s in methods)
    runner = _job_runner()
    eval_available = importlib.util.find_spec("mergehub.eval") is not None
    initial = preset_form(PRESETS[0])
    initial_yaml, _ = form_to_yaml(initial)

    with gr.Blocks(title="mergehub: merge models on the Hub") as demo:
        session = gr.State(lambda: Session())  # a fresh Session per browser session
        auto_name = gr.State("")
        with gr.Row():
            gr.Markdown(
                "# mergehub\nMerge language models with [mergekit](https://github.com/arcee-ai/mergekit) recipes, "
                "streamed tensor by tensor, and push the result to your Hugging Face account."
            )
            gr.LoginButton(scale=0, min_width=240)
        user = gr.Markdown()
        with gr.Tab("Merge"):
            with gr.Row():
                preset_buttons = [gr.Button(name, size="sm") for name in PRESETS]
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    view = _FormView(MAX_MODELS, model_fields, shared_fields)
                with gr.Column(scale=1):
                    recipe_box = gr.Code(
                        initial_yaml,
                        language="yaml",
                        label="Recipe (mergekit YAML): edit here or in the form",
                        interactive=True,
                        lines=18,
                    )
                    recipe_note = gr.Markdown(_recipe_status(initial_yaml))
                    with gr.Row():
                        check_button = gr.Button("Check models")
                        plan_button = gr.Button("Dry run")
                    compat = gr.Markdown(
                        "Check the models to compare architectures, sizes, dtypes and licenses "
                        "(configs and headers only, no weights)."
                    )
                    plan_box = gr.Textbox(label="Plan", lines=8, max_lines=20, visible=False)
            with gr.Row():
                repo_box = gr.Textbox(label="Output repo: a name (created in your account) or namespace/name", scale=3)
                private_box = gr.Checkbox(label="Private", value=False, scale=1)
            gr.CheckboxGroup(
                ["hellaswag", "arc_easy", "mmlu"],
                label="Evaluate after merging",
                interactive=False,
                info="Coming soon."
                if not eval_available
                else "Coming soon: evaluation is not wired into the Space yet.",
            )
            with gr.Row():
                merge_button = gr.Button("Merge and push", variant="primary")
                cancel_button = gr.Button("Cancel", variant="stop")
            status = gr.Markdown()
            log_box = gr.Textbox(label="Log", lines=10, max_lines=20, autoscroll=True, interactive=False)
            with gr.Accordion("Model card of the new repo", open=True):
                card = gr.Markdown()
        with gr.Tab("Lineage"):
            with gr.Row():
                lineage_id = gr.Dropdown([], value="", label="Model", allow_custom_value=True, filterable=True, scale=3)
                lineage_button = gr.Button("Show the family tree", scale=1)
            lineage_out = gr.Markdown()

        def on_form_input(data: dict) -> dict:
            previous = data[recipe_box] or ""
            try:
                _, hidden = yaml_to_form(previous)
            except MergehubError:
                hidden = []
            if hidden:  # the form would drop what it cannot show: leave the YAML alone
                return {
                    recipe_note: "⚠️ The form cannot show "
                    + ", ".join(hidden)
                    + " of this recipe, so it does not rewrite it. "
                    "Edit the YAML, or pick a preset or a method to start over from the form."
                }
            _, position = _extras(previous)
            form = view.collect(data, position)
            text, problems = form_to_yaml(form, previous)
            return {
                recipe_box: text,
                recipe_note: _recipe_status(text) + ("  \n" + _note(problems, "⚠️ Left out") if problems else ""),
            }

        def on_method_input(data: dict) -> dict:
            previous = data[recipe_box] or ""
            try:
                old, problems = yaml_to_form(previous)
            except MergehubError:
                old, problems = None, []
            if old is None or problems:  # start over from the models in the form
                fields = view.collect(data)
                old = Form(fields.method, fields.base, fields.models, [{} for _ in fields.models], {}, "", fields.dtype)
            form = form_with_method(old, data[view.method] or "slerp")
            text, _ = form_to_yaml(form, previous)
            return {**view.render(form), recipe_box: text, recipe_note: _recipe_status(text)}

        def on_yaml_input(text: str) -> dict:
            try:
                form, problems = yaml_to_form(text or "")
            except MergehubError as e:
                return {recipe_note: "❌ " + user_message(e).replace("\n", "  \n")}
            note = "✅ Valid recipe." + (
                "  \n⚠️ The form cannot show " + ", ".join(problems) + "; the YAML is what will be merged."
                if problems
                else ""
            )
            return {**view.render(form), recipe_note: note}

        def preset_handler(name: str) -> Callable[..., dict]:
            def on_preset(data: dict, oauth_token: gr.OAuthToken | None) -> dict:
                current = view.collect(data)
                models = [m for m in (current.base, *current.models) if m]
                if all(m in EXAMPLE_MODELS for m in models):
                    models = []
                layers = EXAMPLE_LAYERS
                if models and name == "Passthrough frankenmerge":
                    layers = layer_count(models[0], _read_token(oauth_token)) or EXAMPLE_LAYERS
                form = preset_form(name, models, layers)
                text, _ = form_to_yaml(form)
                return {**view.render(form), recipe_box: text, recipe_note: _recipe_status(text)}

            return on_preset

        def on_count(data: dict) -> dict:
            count = int(data[view.count] or 1)
            return {**{row: gr.update(visible=i < count) for i, row in enumerate(view.rows)}, **on_form_input(data)}

        def on_search(key: gr.KeyUpData, oauth_token: gr.OAuthToken | None) -> Any:
            ids = search_models(key.input_value, _read_token(oauth_token))
            return gr.update(choices=ids) if ids else gr.update()

        def on_check(text: str, oauth_token: gr.OAuthToken | None) -> str:
            return check_models(text or "", _read_token(oauth_token))

        def on_plan(text: str, oauth_token: gr.OAuthToken | None) -> Any:
            return gr.update(value=dry_run(text or "", _read_token(oauth_token)), visible=True)

        def on_name(text: str, current: str, auto: str) -> tuple[Any, str]:
            try:
                recipe = check_recipe_text(text or "")
            except MergehubError:
                return gr.update(), auto
            name = default_repo_name(recipe.merge_method, [str(r) for r in recipe.referenced_models()])
            if (current or "").strip() in ("", auto):
                return gr.update(value=name), name
            return gr.update(), name if current == name else auto

        def on_user(profile: gr.OAuthProfile | None) -> str:
            if profile is None:
                return "Not signed in: you can build recipes, check models and dry-run; sign in to merge and push."
            return f"Signed in as **{profile.username}**: merges are pushed to your account."

        def on_arm(session_value: Session) -> str:
            session_value.arm()
            return "⏳ Waiting for a free slot (one merge runs at a time)..."

        def on_merge(
            recipe_text: str,
            repo_name: str,
            private: bool,
            session_value: Session,
            oauth_token: gr.OAuthToken | None,
            progress=gr.Progress(),  # noqa: B008 - gradio's way to ask for a progress tracker
        ):
            yield from merge(recipe_text, repo_name, private, session_value, oauth_token, progress, runner=runner)

        def on_cancel(session_value: Session) -> str:
            running = session_value.cancel()
            return (
                "⏹️ Cancelling: the merge stops before its next tensor; nothing will be pushed."
                if running
                else "⏹️ Cancelled."
            )

        def on_lineage(model_id: str, oauth_token: gr.OAuthToken | None) -> str:
            return lineage_markdown(model_id or "", _read_token(oauth_token))

        quick = dict(concurrency_limit=None, show_progress="hidden")
        checks = dict(concurrency_limit=4, concurrency_id="checks")
        form_fields = [view.base, view.ranges, view.dtype, *view.models]
        form_fields += [box for boxes in view.params for box in boxes] + [box for boxes in view.shared for box in boxes]
        for component in form_fields:
            component.input(on_form_input, view.inputs | {recipe_box}, [recipe_box, recipe_note], **quick)
        view.count.input(on_count, view.inputs | {recipe_box}, [*view.rows, recipe_box, recipe_note], **quick)
        view.method.input(
            on_method_input, view.inputs | {recipe_box}, [*view.outputs, recipe_box, recipe_note], **quick
        )
        recipe_box.input(on_yaml_input, recipe_box, [*view.outputs, recipe_note], trigger_mode="always_last", **quick)
        for name, button in zip(PRESETS, preset_buttons, strict=True):
            button.click(preset_handler(name), view.inputs, [*view.outputs, recipe_box, recipe_note], **quick)
        for dropdown in [view.base, *view.models, lineage_id]:
            dropdown.key_up(on_search, None, dropdown, trigger_mode="always_last", **quick)
        recipe_box.change(on_name, [recipe_box, repo_box, auto_name], [repo_box, auto_name], **quick)
        check_button.click(on_check, recipe_box, compat, **checks)
        plan_button.click(on_plan, recipe_box, plan_box, **checks)
        merge_button.click(on_arm, session, status, **quick).then(
            on_merge,
            [recipe_box, repo_box, private_box, session],
            [status, log_box, card],
            concurrency_limit=1,
            concurrency_id="merge",
            show_progress_on=[status],
            api_name="merge",  # the GitHub Action's `dispatch-to-space` calls this endpoint
        )
        cancel_button.click(on_cancel, session, status, **quick)
        lineage_button.click(on_lineage, lineage_id, lineage_out, **checks)
        demo.load(lambda: view.render(initial), None, view.outputs, **quick).then(
            on_name, [recipe_box, repo_box, auto_name], [repo_box, auto_name], **quick
        )
        demo.load(on_user, None, user, **quick)
    demo.queue(default_concurrency_limit=1)
    return demo
