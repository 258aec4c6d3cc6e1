"""mergekit's YAML recipe as frozen, validated models, and the evaluation of parameter settings.

Also the one grammar of Hub repo IDs (`HUB_ID`), the recipe's file name in a merged model
(`RECIPE_FILE`), and mergekit's precedence of parameter settings (`first_setting`).

Like mergekit's pydantic models, the schema ignores keys it does not know and reads numbers
written as text (`1e-5`, which YAML 1.1 loads as a string) as numbers; unlike mergekit, each
ignored key becomes a `RecipeWarning` with its location and line (`Recipe.warnings`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar, Union, get_args, get_origin, runtime_checkable

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from mergehub import safe_yaml
from mergehub.errors import MergehubError, Problem, RecipeError, RecipeWarning, excerpt

__all__ = [
    "ModelRef",
    "ConditionalValue",
    "Setting",
    "InputModel",
    "InputSlice",
    "OutputSlice",
    "OutputModule",
    "TokenizerSettings",
    "Recipe",
    "load_recipe",
    "parse_recipe",
    "evaluate_setting",
    "first_setting",
    "precedence",
    "Scope",
    "recipe_sha256",
    "recipe_fingerprint",
    "parse_lenient",
    "LenientModel",
    "ModelDocument",
    "LocatedDocument",
    "HUB_ID",
    "is_hub_id",
    "repo_name",
    "RECIPE_FILE",
    "format_location",
]

_HUB_NAME = r"[A-Za-z0-9](?:[\w.\-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"(?:{_HUB_NAME}/)?{_HUB_NAME}", re.ASCII)
"""The one grammar of Hub repo IDs, `name` or `org/name`: each part 1 to 96 letters, digits, `_`, `-` or `.`,
starting and ending with a letter or digit (with no `--` or `..`: see `is_hub_id`)."""
RECIPE_FILE = "mergekit_config.yml"
"""The recipe's file name in a merged model, as mergekit writes it."""


def is_hub_id(text: str, *, namespaced: bool = False) -> bool:
    """Whether `text` is a Hub repo ID (`HUB_ID`, without `--` or `..`); with `namespaced`, only `org/name`."""
    return bool(HUB_ID.fullmatch(text)) and "--" not in text and ".." not in text and (not namespaced or "/" in text)


def repo_name(text: str) -> str:
    """A Hub repo name made from free text (a file stem, model names): other characters become `-`, without `--` or
    `..`, at most 96 characters, starting and ending with a letter or digit; "" when nothing is left."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    name = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", name))
    return name[:96].strip("-._")


def _exists(path: str, *, directory: bool = False) -> bool:
    """Whether `path` names an existing file or directory; a name the OS refuses (too long, NUL) does not."""
    try:
        return Path(path).is_dir() if directory else Path(path).exists()
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class ModelRef:
    """A model: a local directory or a Hub repo ID, with an optional revision (`org/name@rev`), and optionally a
    LoRA adapter applied to it (`org/name+org/lora`), the adapter itself a directory or a Hub ID with its revision."""

    path: str
    revision: str | None = None
    adapter: ModelRef | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse `path`, `org/name`, `org/name@revision`, or `model+adapter` where each side is one of those.

        As in mergekit, a `+` separates the model from its LoRA adapter, and one `+` at most is allowed; an
        existing local path is taken whole even if it contains `+` or `@`.
        """
        text = text.strip()
        if not text:
            raise RecipeError("A model reference is empty.", hint="Give a local directory or a Hub ID like `org/name`.")
        if "+" in text and not _exists(text):
            parts = [part.strip() for part in text.split("+")]
            if len(parts) != 2 or not all(parts):
                raise RecipeError(
                    f"Model reference {excerpt(text)} is malformed: a LoRA reference is `model+adapter`, with one `+`.",
                    hint="Write `org/model+org/lora` (each side may be a local directory, or carry `@revision`).",
                )
            model, adapter = (cls._parse_one(part) for part in parts)
            return cls(model.path, model.revision, adapter)
        return cls._parse_one(text)

    @classmethod
    def _parse_one(cls, text: str) -> ModelRef:
        if "@" in text and not _exists(text):
            path, _, revision = text.rpartition("@")
            if not path or not revision:
                raise RecipeError(f"Model reference {excerpt(text)} is malformed.", hint="Use `org/name@revision`.")
            return cls(path, revision)
        return cls(text)

    @property
    def model(self) -> ModelRef:
        """The model without its adapter."""
        return self if self.adapter is None else ModelRef(self.path, self.revision)

    @property
    def is_local(self) -> bool:
        """Whether the model (without its adapter) names an existing local directory."""
        return self.revision is None and _exists(self.path, directory=True)

    @property
    def looks_like_hub_id(self) -> bool:
        """Whether the path has the shape of a Hub repo ID."""
        return is_hub_id(self.path)

    def __str__(self) -> str:
        model = self.path if self.revision is None else f"{self.path}@{self.revision}"
        return model if self.adapter is None else f"{model}+{self.adapter}"


E = TypeVar("E", bound=MergehubError)
Scalar = bool | int | float | str
ScalarOrGradient = Scalar | list[Scalar]


class LenientModel(BaseModel):
    """mergekit's models ignore unknown keys; ours too (`parse_recipe` reports each as a warning)."""

    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True)


@runtime_checkable
class ModelDocument(Protocol):
    """A document naming models (a recipe, an MoE config): which it references, and where, to locate errors."""

    def referenced_models(self) -> list[ModelRef]: ...

    def location_of(self, ref: ModelRef) -> str: ...

    def locate(self, error: E, location: str) -> E: ...


class ConditionalValue(LenientModel):
    """One `{filter, value}` entry: applies when `filter` is a substring of the tensor name."""

    value: ScalarOrGradient
    filter: str | None = None


Setting = ScalarOrGradient | ConditionalValue | list[ConditionalValue]
Parameters = dict[str, Setting]


def _parse_ref(value: Any) -> ModelRef:
    if isinstance(value, ModelRef):
        return value
    if not isinstance(value, str):
        raise ValueError("a model reference must be a string like `org/name`, `org/name@revision` or a path")
    return ModelRef.parse(value)


Ref = Annotated[ModelRef, BeforeValidator(_parse_ref), PlainSerializer(str)]


class InputModel(LenientModel):
    """An entry of `models:`: a whole model and its parameters."""

    model: Ref
    parameters: Parameters | None = None


class InputSlice(LenientModel):
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


class OutputSlice(LenientModel):
    """An entry of `slices:`: one block of output layers merged from its sources.

    `residual_weight` is in mergekit's schema but has no effect there; mergehub ignores it too, with a warning.
    """

    sources: list[InputSlice] = Field(min_length=1)
    base_model: Ref | None = None
    residual_weight: float | None = None
    parameters: Parameters | None = None


class OutputModule(LenientModel):
    """An entry of `modules:` (a text decoder, a vision tower...): its own `models:` or `slices:` and parameters."""

    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    parameters: Parameters | None = None

    @model_validator(mode="after")
    def _one_input_form(self) -> OutputModule:
        if bool(self.models) == bool(self.slices):
            raise ValueError("give each module exactly one of `models:` or `slices:`")
        return self


def _dtype_name(value: Any) -> Any:
    """mergekit reads `torch.float16` as `float16`."""
    return value.removeprefix("torch.") if isinstance(value, str) else value


DtypeName = Annotated[Literal["float32", "float16", "bfloat16", "float64"], BeforeValidator(_dtype_name)]


class TokenizerSettings(LenientModel):
    """The `tokenizer:` block: where the vocabulary comes from (mergekit's default: `union`) and how tokens are
    filled."""

    source: str = "union"
    tokens: dict[str, Any] | None = None
    pad_to_multiple_of: int | None = Field(default=None, gt=0)


class LocatedDocument:
    """A document parsed with the line of each key (`_lines`, by location): where its errors are."""

    def line_of(self, location: str) -> int | None:
        """The line of a location (`models[1].parameters.t`) in the document's text, or of its nearest enclosing
        one."""
        return _line_in(self._lines, location)

    def locate(self, error: E, location: str) -> E:
        """The error, placed at `location` unless it already says where it is, and given its line in this document."""
        if error.location is None:
            error.location = location
        if error.line is None:
            error.line = self.line_of(error.location)
        return error


class Recipe(LenientModel, LocatedDocument):
    """A merge recipe in mergekit's YAML schema.

    `warnings` lists what the recipe sets that is ignored (unknown keys), with locations and
    lines; `line_of` finds the line of any location when the recipe came from text.
    """

    merge_method: str
    base_model: Ref | None = None
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    modules: dict[str, OutputModule] | None = None
    parameters: Parameters | None = None
    dtype: DtypeName | None = None
    out_dtype: DtypeName | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerSettings | None = None
    chat_template: str | None = None
    name: str | None = None
    _warnings: tuple[RecipeWarning, ...] = PrivateAttr(default=())
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)
    _text: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_input_form(self) -> Recipe:
        if sum(bool(form) for form in (self.models, self.slices, self.modules)) != 1:
            raise ValueError("give exactly one of `models:`, `slices:` or `modules:`")
        if self.tokenizer_source and self.tokenizer:
            raise ValueError("give either `tokenizer_source` or `tokenizer`, not both")
        return self

    def __eq__(self, other: object) -> bool:
        """Recipes are equal when they say the same; where it is written (lines, warnings) does not count."""
        return isinstance(other, Recipe) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # its parameters are dicts

    @property
    def text(self) -> str:
        """The recipe's YAML as written (comments kept), or the recipe dumped as YAML when it was built in code."""
        if self._text is not None:
            return self._text
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    @property
    def warnings(self) -> tuple[RecipeWarning, ...]:
        """What the recipe sets that mergehub ignores, as mergekit does (unknown keys), in document order."""
        return self._warnings

    def location_of(self, ref: ModelRef) -> str:
        """Where the recipe first names a model: `base_model`, `models[1].model`, `slices[0].sources[1].model`..."""
        if ref == self.base_model:
            return "base_model"
        for where, models, slices, _ in self.input_blocks():
            prefix = f"{where}." if where else ""
            for i, entry in enumerate(models or []):
                if entry.model == ref:
                    return f"{prefix}models[{i}].model"
            for i, out_slice in enumerate(slices or []):
                if out_slice.base_model == ref:
                    return f"{prefix}slices[{i}].base_model"
                for j, source in enumerate(out_slice.sources):
                    if source.model == ref:
                        return f"{prefix}slices[{i}].sources[{j}].model"
        return ""

    def problem(self, location: str, message: str) -> Problem:
        """A problem at `location`, with its line when known."""
        return Problem(location, message, self.line_of(location))

    def warning(self, location: str, message: str) -> RecipeWarning:
        """A warning about `location`, with its line when known."""
        return RecipeWarning(location, message, self.line_of(location))

    def input_blocks(self) -> list[tuple[str, list[InputModel] | None, list[OutputSlice] | None, Parameters | None]]:
        """Each block of inputs with its location: the recipe itself, or each module of `modules:`."""
        if self.modules:
            return [(f"modules.{name}", m.models, m.slices, m.parameters) for name, m in self.modules.items()]
        return [("", self.models, self.slices, None)]

    def referenced_models(self) -> list[ModelRef]:
        """Every model the recipe names, base first, then in recipe order, without repeats."""
        refs: list[ModelRef] = [self.base_model] if self.base_model else []
        for _, models, slices, _ in self.input_blocks():
            for entry in models or []:
                refs.append(entry.model)
            for out_slice in slices or []:
                if out_slice.base_model:
                    refs.append(out_slice.base_model)
                refs.extend(source.model for source in out_slice.sources)
        return list(dict.fromkeys(refs))

    def parameter_blocks(self) -> list[tuple[str, Parameters]]:
        """Every `parameters:` mapping of the recipe, with its location (`slices[0].sources[1].parameters`)."""
        blocks: list[tuple[str, Parameters | None]] = [("parameters", self.parameters)]
        for where, models, slices, module_parameters in self.input_blocks():
            prefix = f"{where}." if where else ""
            if where:
                blocks.append((f"{prefix}parameters", module_parameters))
            blocks += [(f"{prefix}models[{i}].parameters", m.parameters) for i, m in enumerate(models or [])]
            for i, out_slice in enumerate(slices or []):
                blocks.append((f"{prefix}slices[{i}].parameters", out_slice.parameters))
                blocks += [
                    (f"{prefix}slices[{i}].sources[{j}].parameters", s.parameters)
                    for j, s in enumerate(out_slice.sources)
                ]
        return [(where, block) for where, block in dict(blocks).items() if block]

    def parameter_names(self) -> set[str]:
        """Every parameter name the recipe sets anywhere."""
        return {name for _, block in self.parameter_blocks() for name in block}


def _line_in(lines: dict[str, int], location: str) -> int | None:
    """The line of `location` in a recipe's key lines, or of its nearest enclosing location."""
    while location:
        if location in lines:
            return lines[location]
        location = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", location)
    return None


def format_location(parts: tuple[str | int, ...]) -> str:
    """A document path as written in warnings and errors: `models[1].parameters.t`."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validation_problems(error: ValidationError, lines: dict[str, int]) -> tuple[Problem, ...]:
    """Each problem pydantic found, at its location (`models[0].model`) and line."""
    problems = []
    for item in error.errors(include_input=False):
        # pydantic names union members in the path (`float`, `list[...]`); keep the keys and indices
        parts = tuple(
            p for p in item["loc"] if isinstance(p, int) or not re.search(r"[\[\]()]|^(?:bool|int|float|str)$", p)
        )
        location = format_location(tuple(_short(p) for p in parts))
        problems.append(Problem(location, item["msg"].removeprefix("Value error, "), _line_in(lines, location)))
    return tuple(dict.fromkeys(problems))


_KNOWN_KEYS = sorted(k for k in Recipe.model_fields)


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a type: the members of a Union, the type inside Annotated or Optional."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(annotation) for m in _members(arg)]
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    return [annotation]


def _holds(annotation: Any, value: Any) -> bool:
    """Whether a value of this shape (mapping, list, scalar) could be read as `annotation`."""
    for member in _members(annotation):
        model = isinstance(member, type) and issubclass(member, BaseModel)
        origin = get_origin(member)
        if isinstance(value, dict) and (model or origin is dict or member is Any):
            return True
        if isinstance(value, list) and origin in (list, tuple):
            args = get_args(member)
            return not args or all(_holds(args[0], item) for item in value)
        if not isinstance(value, (dict, list)) and not model and origin is None:
            return True
    return False


def _unknown_keys(
    value: Any, annotation: Any, path: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], type[BaseModel]]]:
    """The path of every key that no model of the schema knows, and the model it is in, walking data and types
    together."""
    for member in _members(annotation):
        if not _holds(member, value):
            continue
        if isinstance(member, type) and issubclass(member, BaseModel) and isinstance(value, dict):
            fields = member.model_fields
            for key, item in value.items():
                if key in fields:
                    yield from _unknown_keys(item, fields[key].annotation, (*path, key))
                else:
                    yield (*path, str(key)), member
        elif get_origin(member) is dict and isinstance(value, dict):
            for key, item in value.items():
                yield from _unknown_keys(item, get_args(member)[1], (*path, str(key)))
        elif get_origin(member) in (list, tuple) and isinstance(value, list) and get_args(member):
            for i, item in enumerate(value):
                yield from _unknown_keys(item, get_args(member)[0], (*path, i))
        return


_NOUNS = {
    "Recipe": "recipe key",
    "InputModel": "key of a `models:` entry",
    "InputSlice": "key of a slice source",
    "OutputSlice": "key of a slice",
    "OutputModule": "key of a module",
    "TokenizerSettings": "key of `tokenizer:`",
    "ConditionalValue": "key of a `{filter, value}` setting",
    "MoEConfig": "key of an MoE config",
    "Expert": "key of an expert",
}


def _short(part: str | int) -> str | int:
    return part if isinstance(part, int) or len(part) <= 40 else part[:39] + "…"


def _ignored_key_warning(path: tuple[str | int, ...], model: type[BaseModel]) -> tuple[str, str]:
    key, known = str(path[-1]), sorted(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    hint = f"did you mean `{close[0]}`?" if close else f"known here: {', '.join(known)}"
    noun = _NOUNS.get(model.__name__, "known key")
    return format_location(
        tuple(_short(p) for p in path)
    ), f"`{_short(key)}` is not a {noun}: ignored, as mergekit does ({hint})."


def _key_lines(text: str) -> dict[str, int]:
    """The 1-based line of every key and list item of the YAML text, by document path."""
    try:
        root = safe_yaml.compose(text)
    except (yaml.YAMLError, RecipeError):
        return {}
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    lines.setdefault(format_location((*path, key.value)), key.start_mark.line + 1)
                    walk(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines.setdefault(format_location((*path, i)), item.start_mark.line + 1)
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return lines


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's complaint for people: ` at line 5, column 10: expected ',' or '}', but got ':' (in the flow mapping
    that starts at line 4, column 17).`, then the lines it names, each with a caret under the column (as PyYAML
    quotes them); no parser internals."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if not problem or mark is None:
        return f": {error}"
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    problem = problem.replace("'<stream end>'", "the end of the text")
    text = f" at {_at(mark)}: {problem}"
    if context:
        what = re.sub(r"^(?:while )?(?:parsing|scanning|constructing) an? ", "in the ", context).removeprefix("while ")
        starts = context_mark is not None and (context_mark.line, context_mark.column) != (mark.line, mark.column)
        text += f" ({what} that starts at {_at(context_mark)})" if starts else f" ({what})"
    marks = [context_mark] if context and context_mark is not None and context_mark.line != mark.line else []
    snippets = [m.get_snippet() for m in [*marks, mark] if m.get_snippet()]
    return text + "." + "".join(f"\n{snippet}" for snippet in snippets)


M = TypeVar("M", bound=BaseModel)


def parse_lenient(text: str, schema: type[M], *, what: str, hint: str) -> tuple[M, dict[str, int], list[RecipeWarning]]:
    """YAML text validated by a lenient schema (a recipe, an MoE config): the object, each key's line, and a warning for
    each key it ignores.

    Raises:
        RecipeError: the YAML is malformed, is not a mapping, or does not follow the schema (each problem located).
    """
    try:
        data = safe_yaml.load(text, what=what)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise RecipeError(
            f"{what} is not valid YAML{yaml_problem(e)}",
            hint="Check indentation and quoting.",
            location="",
            line=mark.line + 1 if mark is not None else None,
        ) from e
    if not isinstance(data, dict):
        raise RecipeError(f"{what} must be a YAML mapping.", hint=hint, location="", line=1)
    lines = _key_lines(text)
    try:
        parsed = schema.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"{what} is invalid:", hint=hint, problems=_validation_problems(e, lines)) from e
    warnings = [
        RecipeWarning(*_ignored_key_warning(path, model), _line_in(lines, format_location(path)))
        for path, model in _unknown_keys(data, schema, ())
    ]
    return parsed, lines, warnings


def parse_recipe(text: str) -> Recipe:
    """Parse recipe YAML text into a validated `Recipe`, with a warning for each key it ignores.

    Raises:
        RecipeError: the YAML is malformed or does not follow mergekit's schema.
    """
    recipe, lines, warnings = parse_lenient(
        text,
        Recipe,
        what="The recipe",
        hint=f"Recipe keys are: {', '.join(_KNOWN_KEYS)}; see README's recipe reference.",
    )
    recipe._lines = lines
    recipe._text = text
    for where, _, slices, _ in recipe.input_blocks():
        for i, out_slice in enumerate(slices or []):
            if out_slice.residual_weight is not None:
                location = f"{where + '.' if where else ''}slices[{i}].residual_weight"
                warnings.append(recipe.warning(location, "`residual_weight` has no effect in mergekit: ignored."))
    recipe._warnings = tuple(sorted(warnings, key=lambda w: (w.line or 0,)))
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file (at most `MERGEHUB_MAX_RECIPE_BYTES`, no YAML aliases)."""
    return parse_recipe(safe_yaml.read_text(path))


def recipe_sha256(text: str) -> str:
    """A stable hash of a recipe's YAML text, used to recognise reruns."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recipe_fingerprint(text: str) -> str:
    """The sha256 of what a recipe says, not how it is written: its YAML data with keys sorted, so that comments,
    key order, quoting and spacing do not count (list order does). A multi-stage recipe's fingerprint is that of
    the list of its documents' data, in order.

    Raises:
        RecipeError: the text is not YAML (or is too large, or uses aliases).
    """
    try:
        documents = [document.data for document in safe_yaml.load_documents(text)]
        data = documents if len(documents) > 1 else safe_yaml.load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"The recipe is not valid YAML: {e}", hint="Check indentation and quoting.") from e
    canonical = json.dumps(
        _with_text_keys(data), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _with_text_keys(node: Any) -> Any:
    """YAML data with every mapping key as text (`1:` and `"1":` alike), so that keys of mixed types sort."""
    if isinstance(node, dict):
        return {str(key): _with_text_keys(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_with_text_keys(value) for value in node]
    return node


def _as_is(value: Any) -> Any:
    return value


def evaluate_setting(setting: Setting, tensor_name: str, t: float, validate: Callable[[Any], Any] = _as_is) -> Any:
    """The value a setting takes for `tensor_name` at relative layer depth `t` (0..1).

    Each scalar is first read by `validate` (the parameter's type: `"1e-5"` becomes 1e-5 for a
    float). A list whose values are then numbers is a gradient interpolated piecewise-linearly
    over `t` (the result validated again); a list of other scalars picks an entry by `t`;
    `{filter, value}` entries apply when the filter is a substring of the name (no filter, or
    `*`, always applies). None when no entry applies.
    """
    if isinstance(setting, ConditionalValue):
        setting = [setting]
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, ConditionalValue) for e in setting):
            for entry in setting:
                if entry.filter in (None, "*") or entry.filter in tensor_name:
                    return evaluate_setting(entry.value, tensor_name, t, validate)
            return None
        values = [validate(e) for e in setting]
        if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in values):
            scaled = t * (len(values) - 1)
            low = int(scaled)
            high = min(len(values) - 1, low + 1)
            frac = scaled - low
            return validate((1 - frac) * values[low] + frac * values[high])
        return values[int(t * (len(values) - 1))]
    return validate(setting)


Scope = tuple[str, Parameters | None]
"""A `parameters:` mapping and its location (`models[1].parameters`)."""


def precedence(model: Scope | None, out_slice: Scope, module: Scope, recipe: Recipe) -> list[Scope]:
    """The scopes a parameter is looked up in, most specific first, as mergekit does.

    A model's (or slice source's) own `parameters`, then its slice's, its module's, the recipe's.
    """
    return [*([model] if model else []), out_slice, module, ("parameters", recipe.parameters)]


def first_setting(
    scopes: list[Scope], name: str, tensor_name: str, t: float, validate: Callable[[Any, str], Any] = lambda v, _: v
) -> tuple[Any, str] | None:
    """The value of parameter `name` for one tensor, and its location, from the first scope that sets one.

    `validate(value, location)` reads each scalar as the parameter's type. A scope whose setting does not
    apply to this tensor (a `{filter, value}` list that matches nothing) passes to the next.
    """
    for where, scope in scopes:
        if scope and name in scope:
            location = f"{where}.{name}".lstrip(".")
            value = evaluate_setting(scope[name], tensor_name, t, lambda v, at=location: validate(v, at))
            if value is not None:
                return value, location
    return None
