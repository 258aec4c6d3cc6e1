"""Recipe + model headers and configs → a `Plan`: one `TensorJob` per output tensor, checked up front.

Planning reads no tensor data and touches no network beyond what the sources already
hold: every name, shape, layer range and parameter is checked here, so a bad merge
fails in seconds instead of after reading gigabytes.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mergehub.architecture import (
    DEFAULT_MODULE,
    LAYER_COUNT_KEYS,
    TEXT_MODULE,
    LayerName,
    is_language_model_tensor,
    module_group,
    module_of,
    per_layer_keys,
    split_layer_name,
    tensor_group,
    text_config,
)
from mergehub.architecture import num_layers as config_num_layers
from mergehub.errors import PlanError, RecipeError, RecipeWarning, excerpt
from mergehub.methods import MethodSpec, ParamSpec, get_method
from mergehub.recipe import InputModel, ModelRef, OutputSlice, Parameters, Recipe, evaluate_setting
from mergehub.sources.base import DTYPES, TensorInfo, TensorSource
from mergehub.vocab import (
    OutputTokenizer,
    TokenOverride,
    VocabAlignment,
    align_vocabularies,
    build_output_tokenizer,
    config_updates,
    tokenizer_files,
)
from mergehub.writer import ShardLayout, TensorSlot, layout_shards

__all__ = ["InputTensor", "TensorJob", "ModelEntry", "InputFile", "Plan", "plan_merge", "output_vocabulary", "embedding_rows", "DEFAULT_SHARD_BYTES"]

DEFAULT_SHARD_BYTES = 5 * 1000**3
_DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
_CODE_NAMES = {v: k for k, v in _DTYPE_CODES.items()}
_MAX_PROBLEMS = 20
_COPY = get_method("passthrough")
"""The method of tensors copied unchanged (not floating point, or outside the merge)."""


@dataclass(frozen=True)
class InputTensor:
    """One input of a job: a tensor of the model at `Plan.models[model]`."""

    model: int
    name: str


@dataclass(frozen=True)
class TensorJob:
    """How one output tensor is made: its inputs, the method, and resolved parameters."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    method: str
    inputs: tuple[InputTensor, ...]
    base_index: int | None
    params: tuple[tuple[str, Any], ...]
    read_bytes: int
    vocab: bool = False
    """Whether the inputs are re-indexed onto the output vocabulary (rows) before merging."""


@dataclass(frozen=True)
class ModelEntry:
    """An input model: its reference and how many bytes the merge reads from it."""

    ref: str
    revision: str | None
    read_bytes: int


@dataclass(frozen=True)
class InputFile:
    """A weight file a Hub model's tensors are read from, and whether its bytes are checked on arrival.

    A file the merge reads whole is hashed as it streams and compared with the sha256 the Hub
    lists (`verified`); otherwise `reason` says why it is not.
    """

    model: int
    file: str
    verified: bool
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    """Everything a merge will do, before any weight is read."""

    method: str
    models: tuple[ModelEntry, ...]
    jobs: tuple[TensorJob, ...]
    shards: tuple[ShardLayout, ...]
    config: dict = field(hash=False)
    config_model: int
    input_dtype: str | None
    num_layers: int | None
    peak_memory_bytes: int
    vocab: VocabAlignment | None = None
    warnings: tuple[RecipeWarning, ...] = ()
    """What the recipe sets that is ignored (as mergekit ignores it), each with its location and line."""
    input_files: tuple[InputFile, ...] = ()
    """The Hub models' weight files the merge reads from, and which of them are verified in transit."""

    @property
    def read_bytes(self) -> int:
        """Bytes read from all input models."""
        return sum(m.read_bytes for m in self.models)

    @property
    def write_bytes(self) -> int:
        """Bytes of tensor data written."""
        return sum(shard.data_bytes for shard in self.shards)

    def to_json(self) -> str:
        """The plan as JSON (round-trips through `Plan.from_json`)."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Rebuild a plan written by `to_json`."""
        data = json.loads(text)
        data["models"] = tuple(ModelEntry(**m) for m in data["models"])
        data["jobs"] = tuple(
            TensorJob(
                **{
                    **job,
                    "shape": tuple(job["shape"]),
                    "inputs": tuple(InputTensor(**i) for i in job["inputs"]),
                    "params": tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in job["params"]),
                }
            )
            for job in data["jobs"]
        )
        data["shards"] = tuple(
            ShardLayout(s["filename"], tuple(TensorSlot(**{**t, "shape": tuple(t["shape"])}) for t in s["slots"]))
            for s in data["shards"]
        )
        data["warnings"] = tuple(RecipeWarning(**w) for w in data["warnings"])
        data["input_files"] = tuple(InputFile(**f) for f in data.get("input_files", ()))
        if data["vocab"] is not None:
            vocab = data["vocab"]
            data["vocab"] = VocabAlignment(
                size=vocab["size"], rows=vocab["rows"], maps={k: tuple(v) for k, v in vocab["maps"].items()},
                overrides=tuple(TokenOverride(**o) for o in vocab["overrides"]),
            )
        return cls(**data)

    def describe(self) -> str:
        """A human-readable account of the plan, for `--dry-run`: models, output, warnings, then every tensor."""
        lines = [f"Plan: {self.method} merge of {len(self.models)} models into {len(self.jobs)} tensors"]
        lines.append("Input models (bytes to read):")
        lines += [f"  [{i}] {m.ref}{' @ ' + m.revision if m.revision else ''}: {_size(m.read_bytes)}" for i, m in enumerate(self.models)]
        lines.append(f"Output: {len(self.shards)} shard(s), {_size(self.write_bytes)}; layers: {self.num_layers}")
        lines.append(f"Estimated peak memory for tensors: {_size(self.peak_memory_bytes)}")
        lines += [f"Warning: {w}" for w in self.warnings]
        lines.append("Tensors:")
        for job in self.jobs:
            sources = ", ".join(f"[{i.model}]{'' if i.name == job.name else ':' + i.name}" for i in job.inputs)
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in job.params)
            lines.append(f"  {job.name} {job.dtype}{list(job.shape)} <- {job.method}({sources}){' ' + params if params else ''}")
        if self.input_files:
            checked = sum(f.verified for f in self.input_files)
            lines.append(f"Hub weight files checked against their sha256 as they stream: {checked} of {len(self.input_files)}")
            lines += [f"  not checked: [{f.model}] {f.file} ({f.reason})" for f in self.input_files if not f.verified]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1000
    return ""


@dataclass(frozen=True, eq=False)
class _Source:
    """A slice source: layers `[start, end)` of a model, and where its `parameters:` are in the recipe."""

    model: ModelRef
    layer_range: tuple[int, int]
    parameters: Parameters | None
    location: str


@dataclass(frozen=True, eq=False)
class _Slice:
    """A block of output layers and its sources; `location` is `slices[0]`, `models` or `modules.x.slices[0]`."""

    sources: tuple[_Source, ...]
    base_model: ModelRef | None
    parameters: Parameters | None
    location: str

    def reference_index(self, base: ModelRef | None) -> int:
        """The source whose tensor names and config stand for the slice: the base's, else the first."""
        models = [s.model for s in self.sources]
        return models.index(base) if base in models else 0


@dataclass(frozen=True, eq=False)
class _Module:
    """One module of the output (`default`, or a multimodal model's `text_decoder`, `vision_tower`...)."""

    name: str
    slices: tuple[_Slice, ...]
    parameters: Parameters | None
    location: str  # `modules.vision_tower`, or "" when the recipe has no `modules:`
    sliced: bool  # the recipe gave slices, so the output's layer count follows them


Chain = Sequence[tuple[str, Parameters | None]]


@dataclass
class _Planner:
    """Mutable state used while building one plan; discarded afterwards."""

    recipe: Recipe
    method: MethodSpec
    sources: Mapping[ModelRef, TensorSource]
    refs: list[ModelRef]
    configs: dict[ModelRef, dict]
    vocab: VocabAlignment | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[RecipeWarning] = field(default_factory=list)
    jobs: list[TensorJob] = field(default_factory=list)
    read_bytes: dict[ModelRef, int] = field(default_factory=dict)

    def module_names(self, ref: ModelRef) -> list[str]:
        """The modules of a model, in mergekit's names: `default` for a text-only model."""
        names = sorted({module_of(n) for n in self.sources[ref].tensors()}, key=lambda m: (m != TEXT_MODULE, m))
        return [DEFAULT_MODULE] if names in ([TEXT_MODULE], []) else names

    def in_module(self, name: str, module: str) -> bool:
        return module == DEFAULT_MODULE or module_of(name) == module

    def layers_of(self, ref: ModelRef, module: str = DEFAULT_MODULE) -> int:
        """The layer count of a model's module: the language model's from config.json, a tower's from its tensors."""
        if module in (DEFAULT_MODULE, TEXT_MODULE):
            count = config_num_layers(self.configs[ref])
            if count is None:
                raise PlanError(
                    f"{ref}: config.json names no layer count ({', '.join(LAYER_COUNT_KEYS)}).",
                    hint="mergehub needs the layer count to map layers; check the model's config.json.",
                )
            return count
        indices = [p.index for n in self.sources[ref].tensors() if self.in_module(n, module) and (p := split_layer_name(n))]
        return max(indices) + 1 if indices else 0

    def slices_from_models(self, models: list[InputModel], where: str, module: str) -> _Slice:
        """`models:` as mergekit reads it: one slice over all layers, the base model added when not listed."""
        prefix = f"{where}." if where else ""
        sources = [_Source(m.model, (0, self.layers_of(m.model, module)), m.parameters, f"{prefix}models[{i}]") for i, m in enumerate(models)]
        base = self.recipe.base_model
        if base is not None and base not in [m.model for m in models]:
            sources.append(_Source(base, (0, self.layers_of(base, module)), None, "base_model"))
        counts = {s.model: s.layer_range[1] for s in sources}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{ref}: {n}" for ref, n in counts.items())
            what = "" if module == DEFAULT_MODULE else f" in {module}"
            raise PlanError(
                f"The models have different layer counts{what} ({detail}).",
                hint="Merge matching layers explicitly with `slices:` and `layer_range`.",
            )
        return _Slice(tuple(sources), None, None, f"{prefix}models")

    def slices_from_recipe(self, slices: list[OutputSlice], where: str) -> tuple[_Slice, ...]:
        prefix = f"{where}." if where else ""
        return tuple(
            _Slice(
                tuple(_Source(s.model, s.layer_range, s.parameters, f"{prefix}slices[{i}].sources[{j}]") for j, s in enumerate(out.sources)),
                out.base_model, out.parameters, f"{prefix}slices[{i}]",
            )
            for i, out in enumerate(slices)
        )

    def output_modules(self, config_ref: ModelRef) -> tuple[list[_Module], list[str]]:
        """The modules to merge, as mergekit normalizes a recipe, and the modules copied unmerged from `config_ref`."""
        recipe, available = self.recipe, self.module_names(config_ref)
        if recipe.modules:
            for name in recipe.modules:
                if name not in available:
                    raise RecipeError(
                        f"modules.{name}: {config_ref} has no module {name!r}.", hint=f"Its modules are: {', '.join(available)}.",
                        location=f"modules.{name}", line=recipe.line_of(f"modules.{name}"),
                    )
            modules = []
            for name, module in recipe.modules.items():
                where = f"modules.{name}"
                slices = self.slices_from_recipe(module.slices, where) if module.slices else (self.slices_from_models(module.models or [], where, name),)
                modules.append(_Module(name, slices, module.parameters, where, bool(module.slices)))
            for name in available:
                if name not in recipe.modules:
                    count = sum(self.in_module(n, name) for n in self.sources[config_ref].tensors())
                    self.warnings.append(recipe.warning("modules", f"module `{name}` is not listed: its {count} tensors are left out of the output, as mergekit does."))
            return modules, []
        if recipe.models:
            return [_Module(name, (self.slices_from_models(recipe.models, "", name),), None, "", False) for name in available], []
        main = available[0]
        copied = available[1:]
        if copied:
            self.warnings.append(recipe.warning(
                "slices", f"{', '.join(copied)}: copied unmerged from {config_ref}; `slices:` apply to the language model "
                "(mergekit refuses `slices:` on a model with several modules: use `modules:` to merge them too).",
            ))
        return [_Module(main, self.slices_from_recipe(recipe.slices or [], ""), None, "", True)], copied

    def check_slice(self, module: _Module, out_slice: _Slice) -> ModelRef | None:
        """Check one slice's sources against the method's input contract, as mergekit does; return its base model."""
        label = out_slice.location
        for source in out_slice.sources:
            count = self.layers_of(source.model, module.name)
            if source.layer_range[1] > count:
                raise RecipeError(
                    f"{label}: layer_range {list(source.layer_range)} of {source.model} is out of bounds: it has {count} layers.",
                    hint=f"Use a range within [0, {count}].", location=f"{source.location}.layer_range",
                    line=self.recipe.line_of(f"{source.location}.layer_range"),
                )
        lengths = {s.layer_range[1] - s.layer_range[0] for s in out_slice.sources}
        if len(lengths) > 1:
            raise RecipeError(f"{label}: sources cover different numbers of layers ({sorted(lengths)}).", hint="Give every source of a slice layer ranges of one length.")
        models = [s.model for s in out_slice.sources]
        if len(set(models)) != len(models):
            raise RecipeError(f"{label}: a model appears twice among the sources.", hint="List each model once per slice.")
        method = self.method
        n = len(models)
        if n < method.min_inputs or (method.max_inputs is not None and n > method.max_inputs):
            wanted = str(method.min_inputs) if method.max_inputs == method.min_inputs else (
                f"at least {method.min_inputs}" if method.max_inputs is None else f"{method.min_inputs} to {method.max_inputs}"
            )
            raise RecipeError(
                f"{method.name} merges {wanted} model(s) per tensor, but {label} gives {n}.",
                hint="Adjust the models listed, or choose another method.",
            )
        base = None if method.base == "ignored" else out_slice.base_model or self.recipe.base_model
        if base is not None and base not in models:
            raise RecipeError(f"{label}: the base model {base} is not among the sources.", hint="Add the base model to the slice's sources.")
        if method.base == "required" and base is None:
            raise RecipeError(f"{method.name} needs a `base_model`.", hint="Add `base_model: <model>` to the recipe.")
        others = n - (base is not None)
        if others < method.min_non_base or (method.max_non_base is not None and others > method.max_non_base):
            wanted = str(method.min_non_base) if method.max_non_base == method.min_non_base else f"at least {method.min_non_base}"
            raise RecipeError(
                f"{method.name} merges {wanted} model(s) besides the base, but {label} gives {others}.",
                hint="Adjust the models listed, or choose another method.",
            )
        return base

    def chain(self, module: _Module, out_slice: _Slice) -> list[tuple[str, Parameters | None]]:
        """The shared parameter scopes of a slice, by mergekit's precedence: slice, module, recipe."""
        return [(f"{out_slice.location}.parameters", out_slice.parameters), (f"{module.location}.parameters", module.parameters),
                ("parameters", self.recipe.parameters)]

    def resolve(self, spec_params: Sequence, out_name: str, t: float, chain: Chain,
                inputs: list[tuple[_Source, str]], base_index: int | None) -> tuple[tuple[str, Any], ...]:
        """Resolve every method parameter for one tensor, by mergekit's precedence."""
        resolved: list[tuple[str, Any]] = []
        for spec in spec_params:
            if spec.scope == "shared":
                value = self.first_value(spec, chain, out_name, t, where=out_name)
            else:
                values = []
                for i, (source, name) in enumerate(inputs):
                    if spec.scope == "non_base" and i == base_index:
                        values.append(None)
                    else:
                        scopes = [(f"{source.location}.parameters", source.parameters), *chain]
                        values.append(self.first_value(spec, scopes, name, t, where=f"{source.model} {name}"))
                value = tuple(values)
            resolved.append((spec.argument, value))
        return tuple(resolved)

    def first_value(self, spec: ParamSpec, chain: Chain, tensor_name: str, t: float, where: str) -> Any:
        """The value of a parameter from the first scope that sets one for this tensor, read as the parameter's type."""
        for location, scope in chain:
            if scope and spec.name in scope:
                value = evaluate_setting(scope[spec.name], tensor_name, t, _validator(spec, f"{location}.{spec.name}".lstrip("."), self.recipe))
                if value is not None:
                    return value
        if spec.required:
            raise RecipeError(f"Missing required parameter {spec.name!r} for {where}.", hint=f"Set `{spec.name}` in the model's or the recipe's `parameters`.")
        return spec.default

    def find_input(self, ref: ModelRef, name: str) -> TensorInfo | None:
        tensors = self.sources[ref].tensors()
        if name in tensors:
            return tensors[name]
        if name.endswith("lm_head.weight"):  # tied embeddings: transformers reads the input embedding
            for candidate in tensors.values():
                if tensor_group(candidate.name) == "pre" and is_language_model_tensor(candidate.name) and "embed" in candidate.name and candidate.name.endswith("weight"):
                    return candidate
        return None

    def add_copy(self, ref: ModelRef, name: str) -> None:
        """A job that copies one tensor of `ref` unchanged but for the output dtype (a vision tower's, say)."""
        info = self.sources[ref].tensors()[name]
        floating = DTYPES[info.dtype].is_floating_point
        dtype = _DTYPE_CODES.get(self.recipe.out_dtype or self.recipe.dtype or "", info.dtype) if floating else info.dtype
        self.read_bytes[ref] = self.read_bytes.get(ref, 0) + info.nbytes
        self.jobs.append(
            TensorJob(name=name, shape=info.shape, dtype=dtype, method=_COPY.name, inputs=(InputTensor(self.refs.index(ref), name),),
                      base_index=None, params=tuple((p.argument, p.default_for(1, None)) for p in _COPY.params),
                      read_bytes=info.nbytes)
        )

    def add_job(self, out_name: str, chain: Chain, inputs: list[tuple[_Source, str]],
                base_ref: ModelRef | None, reference: int, t: float) -> None:
        infos = []
        for source, name in inputs:
            info = self.find_input(source.model, name)
            if info is None:
                self.problems.append(f"{source.model} has no tensor {name!r} (needed for {out_name}).")
                return
            infos.append(info)
        vocab = self.vocab is not None and is_language_model_tensor(out_name) and tensor_group(out_name) != "layer" and all(
            len(info.shape) == 2 and info.shape[0] == embedding_rows(self.sources[s.model]) for (s, _), info in zip(inputs, infos)
        )
        shapes = {info.shape[1:] if vocab else info.shape for info in infos}
        if len(shapes) > 1:
            detail = ", ".join(f"{s.model}: {list(i.shape)}" for (s, _), i in zip(inputs, infos))
            vocab_like = "embed" in out_name or "lm_head" in out_name
            hint = " The vocabularies differ: set `tokenizer_source` (base, union or a model)." if vocab_like else ""
            self.problems.append(f"{out_name}: shapes differ ({detail}).{hint}")
            return
        floating = all(DTYPES[i.dtype].is_floating_point for i in infos)
        method = self.method.name if floating else _COPY.name
        job_inputs = inputs
        base_index = next((i for i, (s, _) in enumerate(inputs) if s.model == base_ref), None)
        if not floating:
            job_inputs, infos, base_index = [inputs[reference]], [infos[reference]], None
        spec = self.method.params if floating else _COPY.params
        params = self.resolve(spec, out_name, t, chain, job_inputs, base_index)
        dtype = _DTYPE_CODES.get(self.recipe.out_dtype or self.recipe.dtype or "", infos[min(reference, len(infos) - 1)].dtype) if floating else infos[0].dtype
        for (source, _), info in zip(job_inputs, infos):
            self.read_bytes[source.model] = self.read_bytes.get(source.model, 0) + info.nbytes
        shape = (self.vocab.rows, *infos[0].shape[1:]) if vocab and self.vocab else infos[0].shape
        self.jobs.append(
            TensorJob(
                name=out_name,
                shape=shape,
                dtype=dtype,
                method=method,
                inputs=tuple(InputTensor(self.refs.index(s.model), i.name) for (s, _), i in zip(job_inputs, infos)),
                base_index=base_index,
                params=params,
                read_bytes=sum(i.nbytes for i in infos),
                vocab=vocab and floating,
            )
        )

    def plan_module(self, module: _Module, bases: list[ModelRef | None]) -> int:
        """Jobs for one module: the tensors before its layers, each output layer, the tensors after; returns its layer count."""
        first, last = module.slices[0], module.slices[-1]

        def add_outside_layers(group: str, out_slice: _Slice, base: ModelRef | None) -> None:
            ref_index = out_slice.reference_index(base)
            reference = out_slice.sources[ref_index].model
            chain = self.chain(module, out_slice)
            for name in sorted(n for n in self.sources[reference].tensors() if self.in_module(n, module.name) and module_group(n) == group):
                self.add_job(name, chain, [(s, name) for s in out_slice.sources], base, ref_index, t=0.0)

        add_outside_layers("pre", first, bases[0])
        out_layer = 0
        for out_slice, base in zip(module.slices, bases):
            ref_index = out_slice.reference_index(base)
            reference = out_slice.sources[ref_index]
            chain = self.chain(module, out_slice)
            length = reference.layer_range[1] - reference.layer_range[0]
            layer_names: dict[int, list[LayerName]] = {}
            for name in self.sources[reference.model].tensors():
                parsed = split_layer_name(name) if self.in_module(name, module.name) else None
                if parsed is not None and (module.name != DEFAULT_MODULE or is_language_model_tensor(name)):
                    layer_names.setdefault(parsed.index, []).append(parsed)
            for k in range(length):
                t = k / (length - 1) if length > 1 else 1.0
                for parsed in sorted(layer_names.get(reference.layer_range[0] + k, []), key=lambda p: p.suffix):
                    inputs = [(s, parsed.renumbered(s.layer_range[0] + k)) for s in out_slice.sources]
                    self.add_job(parsed.renumbered(out_layer), chain, inputs, base, ref_index, t)
                out_layer += 1
        add_outside_layers("post", last, bases[-1])
        return out_layer

    def parameter_warnings(self, modules: list[_Module], bases: dict[_Slice, ModelRef | None]) -> None:
        """A warning for each parameter mergekit would ignore: unknown to the method, shared but set per model, or per model on the base."""
        method, recipe = self.method, self.recipe
        known = [p.name for p in method.params]
        per_model = {f"{s.location}.parameters": s.model for m in modules for sl in m.slices for s in sl.sources}
        base_of = {f"{s.location}.parameters": bases[sl] for m in modules for sl in m.slices for s in sl.sources}
        for where, block in recipe.parameter_blocks():
            for name in block:
                location = f"{where}.{name}"
                spec = method.param(name)
                if spec is None:
                    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
                    takes = f"did you mean `{close[0]}`?" if close else f"{method.name} takes: {', '.join(known) or 'no parameters'}"
                    self.warnings.append(recipe.warning(location, f"`{name}` is not a {method.name} parameter: ignored ({takes})."))
                elif where in per_model and spec.scope == "shared":
                    self.warnings.append(recipe.warning(
                        location, f"`{name}` is one value for all models in {method.name}, so a model's own `{name}` is ignored "
                        "(set it in the recipe's or the slice's `parameters`).",
                    ))
                elif where in per_model and spec.scope == "non_base" and per_model[where] == base_of[where]:
                    self.warnings.append(recipe.warning(location, f"`{name}` is not used for the base model by {method.name}: ignored."))


def _with_ignored(error: RecipeError, warnings: Sequence[RecipeWarning]) -> RecipeError:
    """The error, its hint also naming what the recipe sets that is ignored: a misplaced key is often the cause."""
    if not warnings:
        return error
    ignored = "; ".join(str(w) for w in warnings[:3]) + (f"; and {len(warnings) - 3} more" if len(warnings) > 3 else "")
    hint = f"{error.hint + ' ' if error.hint else ''}Ignored in this recipe: {ignored}"
    return type(error)(error.message, hint=hint, location=error.location, line=error.line, warnings=error.warnings)


@functools.cache
def _adapter(kind: type) -> TypeAdapter:
    return TypeAdapter(kind)


def _validator(spec: ParamSpec, location: str, recipe: Recipe) -> Callable[[Any], Any]:
    """Read a setting's scalar as the parameter's type, the way mergekit's pydantic does (`"1e-5"` is a float)."""

    def validate(value: Any) -> Any:
        try:
            return _adapter(spec.type).validate_python(value)
        except ValidationError as e:
            raise RecipeError(
                f"{location}: {excerpt(value)} is not a {spec.type.__name__}.", hint=f"Write `{spec.name}` as a {spec.type.__name__}, e.g. {spec.name}: {_example(spec.type)}.",
                location=location, line=recipe.line_of(location),
            ) from e

    return validate


def _example(kind: type) -> str:
    return {bool: "true", int: "10", float: "0.5"}.get(kind, "...")


def _output_config(planner: _Planner, modules: list[_Module], bases: dict[_Slice, ModelRef | None], ref: ModelRef,
                   dtype: str | None) -> dict:
    """The merged model's config: the reference model's, with each sliced module's layer count and per-layer lists rebuilt."""
    config = copy.deepcopy(planner.configs[ref])
    for module in modules:
        total = sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in module.slices)
        if module.name in (DEFAULT_MODULE, TEXT_MODULE):
            if config_num_layers(config) is None:
                continue
            target = text_config(config)
            per_layer = per_layer_keys(config)
            for key in LAYER_COUNT_KEYS:
                if isinstance(target.get(key), int):
                    target[key] = total
            for key in per_layer:
                rebuilt = []
                for out_slice in module.slices:
                    source = out_slice.sources[out_slice.reference_index(bases[out_slice])]
                    values = text_config(planner.configs[source.model]).get(key) or target[key]
                    rebuilt += values[source.layer_range[0] : source.layer_range[1]]
                target[key] = rebuilt
        elif module.sliced:
            tower = config.get(module.name.replace("_tower", "").replace("_model", "") + "_config")
            for key in ("num_hidden_layers", "depth"):
                if isinstance(tower, dict) and isinstance(tower.get(key), int):
                    tower[key] = total
    if dtype is not None:
        key = "dtype" if "dtype" in config else "torch_dtype"
        config[key] = _CODE_NAMES.get(dtype, config.get(key))
    return config


def _architecture_problems(planner: _Planner) -> list[str]:
    kinds = {ref: tuple(planner.configs[ref].get("architectures") or [planner.configs[ref].get("model_type")]) for ref in planner.refs}
    if len(set(kinds.values())) <= 1:
        return []
    detail = ", ".join(f"{ref}: {'/'.join(map(str, k))}" for ref, k in kinds.items())
    return [f"The models have different architectures ({detail})."]


def plan_merge(recipe: Recipe, sources: Mapping[ModelRef, TensorSource], *, out_shard_bytes: int = DEFAULT_SHARD_BYTES,
               prefetch_bytes: int = 0, vocabulary: tuple[OutputTokenizer, VocabAlignment] | None = None) -> Plan:
    """Build and check the plan of a merge from the recipe and the models' headers and configs.

    What mergekit would ignore (parameters a method does not take, unknown keys, modules not
    listed) is ignored here too, and listed in `Plan.warnings`.

    Raises:
        RecipeError: a parameter is missing or of the wrong type, or the slices or modules are malformed.
        PlanError: the models do not fit together (missing tensors, shapes, layer counts, architectures).
    """
    method = get_method(recipe.merge_method)
    refs = recipe.referenced_models()
    planner = _Planner(recipe, method, sources, refs, {ref: sources[ref].config() for ref in refs})
    planner.vocab = vocabulary[1] if vocabulary else None
    config_ref = recipe.base_model if recipe.base_model in refs else refs[0]
    modules, copied = planner.output_modules(config_ref)
    bases = {out_slice: planner.check_slice(module, out_slice) for module in modules for out_slice in module.slices}
    planner.parameter_warnings(modules, bases)
    planner.problems += _architecture_problems(planner)
    try:
        layers = {module.name: planner.plan_module(module, [bases[s] for s in module.slices]) for module in modules}
    except RecipeError as e:
        raise _with_ignored(e, (*recipe.warnings, *planner.warnings)) from e
    for name in sorted(n for n in sources[config_ref].tensors() if module_of(n) in copied):
        planner.add_copy(config_ref, name)  # towers and projectors beside sliced language layers: the base model's, unmerged

    if planner.problems:
        shown = planner.problems[:_MAX_PROBLEMS]
        more = len(planner.problems) - len(shown)
        raise PlanError(
            f"The merge cannot be planned ({len(planner.problems)} problem(s)):\n  " + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else ""),
            hint="Check that the models share an architecture and sizes, and that the recipe names the right layers.",
            problems=tuple(planner.problems),
        )
    if not planner.jobs:
        raise PlanError("The merge produces no tensors.", hint="Check the recipe's models and layer ranges.")

    out_dtype = _DTYPE_CODES.get(recipe.out_dtype or recipe.dtype or "")
    config = _output_config(planner, modules, bases, config_ref, out_dtype)
    if vocabulary is not None:
        text_config(config).update(config_updates(vocabulary[0], vocabulary[1].rows, text_config(config)))
    jobs = tuple(planner.jobs)
    return Plan(
        method=method.name,
        models=tuple(ModelEntry(str(ref), sources[ref].revision, planner.read_bytes.get(ref, 0)) for ref in refs),
        jobs=jobs,
        shards=layout_shards([(j.name, j.dtype, j.shape) for j in jobs], out_shard_bytes),
        config=config,
        config_model=refs.index(config_ref),
        vocab=planner.vocab,
        input_dtype=_DTYPE_CODES.get(recipe.dtype or ""),
        num_layers=layers.get(DEFAULT_MODULE, layers.get(TEXT_MODULE)),
        peak_memory_bytes=max(_job_memory(j) for j in jobs) + prefetch_bytes,
        warnings=tuple(recipe.warnings) + tuple(planner.warnings),
        input_files=_input_files(jobs, refs, sources),
    )


def _input_files(jobs: Sequence[TensorJob], refs: Sequence[ModelRef], sources: Mapping[ModelRef, TensorSource]) -> tuple[InputFile, ...]:
    """Each Hub model's weight files the jobs read from: verified when read whole and the Hub lists a sha256."""
    read: dict[int, set[str]] = {}
    for job in jobs:
        for item in job.inputs:
            read.setdefault(item.model, set()).add(item.name)
    files = []
    for index, ref in enumerate(refs):
        source = sources[ref]
        if source.revision is None or index not in read:
            continue
        by_file: dict[str, list[str]] = {}
        for info in source.tensors().values():
            by_file.setdefault(info.file, []).append(info.name)
        for file, names in sorted(by_file.items()):
            used = sum(name in read[index] for name in names)
            if not used:
                continue
            whole = used == len(names)
            reason = "" if whole and file in source.checksums else "read in part" if not whole else "no sha256 in the repo listing, or checks are off"
            files.append(InputFile(index, file, not reason, reason))
    return tuple(files)


def _job_memory(job: TensorJob) -> int:
    """Bytes held while computing one job: stored inputs, float32 copies, float32 result and output."""
    numel = 1
    for dim in job.shape:
        numel *= dim
    out_item = DTYPES[job.dtype].itemsize
    return job.read_bytes + 4 * numel * (len(job.inputs) + 2) + out_item * numel


def embedding_rows(source: TensorSource) -> int | None:
    """The row count of a model's input embedding (its vocabulary size as stored), or None if it has none."""
    for info in source.tensors().values():
        if tensor_group(info.name) == "pre" and "embed" in info.name and len(info.shape) == 2:
            return info.shape[0]
    return None


def output_vocabulary(recipe: Recipe, sources: Mapping[ModelRef, TensorSource]) -> tuple[OutputTokenizer, VocabAlignment] | None:
    """The output tokenizer and each model's row map, when the recipe sets `tokenizer_source` or `tokenizer`.

    Raises:
        RecipeError: the tokenizer source or a `tokens:` entry names something the models lack.
    """
    settings = recipe.tokenizer
    spec = settings.source if settings else recipe.tokenizer_source
    if spec is None:
        return None
    refs = recipe.referenced_models()
    files = {str(ref): tokenizer_files(sources[ref]) for ref in refs}
    rows = {str(ref): embedding_rows(sources[ref]) for ref in refs}
    missing = [label for label, count in rows.items() if count is None]
    if missing:
        raise PlanError(f"No input embedding found in {', '.join(missing)}.", hint="Vocabulary merging needs each model's embedding.")
    sizes = {str(ref): text_config(sources[ref].config()).get("vocab_size") or rows[str(ref)] for ref in refs}
    tokens = settings.tokens if settings else None
    base = str(recipe.base_model) if recipe.base_model else None
    output = build_output_tokenizer(spec, base, files, list(tokens or {}), vocab_sizes=sizes)
    alignment = align_vocabularies(output, rows, tokens, settings.pad_to_multiple_of if settings else None)
    return output, alignment