"""Recipe + model headers and configs → a `Plan`: one `TensorJob` per output tensor, checked up front.

Planning reads no tensor data and touches no network beyond what the sources already
hold: every name, shape, layer range and parameter is checked here, so a bad merge
fails in seconds instead of after reading gigabytes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mergehub.architecture import LAYER_COUNT_KEYS, is_language_model_tensor, parse_layer_name, per_layer_keys, tensor_group, text_config
from mergehub.architecture import num_layers as config_num_layers
from mergehub.errors import PlanError, RecipeError, excerpt
from mergehub.methods import MethodSpec, get_method
from mergehub.recipe import InputSlice, ModelRef, OutputSlice, Parameters, Recipe, evaluate_setting
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
    warnings: tuple[str, ...] = ()
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
        data["warnings"] = tuple(data["warnings"])
        data["input_files"] = tuple(InputFile(**f) for f in data.get("input_files", ()))
        if data["vocab"] is not None:
            vocab = data["vocab"]
            data["vocab"] = VocabAlignment(
                size=vocab["size"], rows=vocab["rows"], maps={k: tuple(v) for k, v in vocab["maps"].items()},
                overrides=tuple(TokenOverride(**o) for o in vocab["overrides"]),
            )
        return cls(**data)

    def describe(self) -> str:
        """A human-readable account of the plan, for `--dry-run`."""
        lines = [f"Plan: {self.method} merge of {len(self.models)} models into {len(self.jobs)} tensors"]
        lines.append("Input models (bytes to read):")
        lines += [f"  [{i}] {m.ref}{' @ ' + m.revision if m.revision else ''}: {_size(m.read_bytes)}" for i, m in enumerate(self.models)]
        lines.append(f"Output: {len(self.shards)} shard(s), {_size(self.write_bytes)}; layers: {self.num_layers}")
        lines.append(f"Estimated peak memory for tensors: {_size(self.peak_memory_bytes)}")
        lines.append("Tensors:")
        for job in self.jobs:
            sources = ", ".join(f"[{i.model}]{'' if i.name == job.name else ':' + i.name}" for i in job.inputs)
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in job.params)
            lines.append(f"  {job.name} {job.dtype}{list(job.shape)} <- {job.method}({sources}){' ' + params if params else ''}")
        lines += [f"Warning: {w}" for w in self.warnings]
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
    jobs: list[TensorJob] = field(default_factory=list)
    read_bytes: dict[ModelRef, int] = field(default_factory=dict)

    def layers_of(self, ref: ModelRef) -> int:
        count = config_num_layers(self.configs[ref])
        if count is None:
            raise PlanError(
                f"{ref}: config.json names no layer count ({', '.join(LAYER_COUNT_KEYS)}).",
                hint="mergehub needs the layer count to map layers; check the model's config.json.",
            )
        return count

    def output_slices(self) -> list[OutputSlice]:
        """The recipe's input as slices; `models:` becomes one slice over all layers, as mergekit does."""
        recipe = self.recipe
        if recipe.slices:
            return list(recipe.slices)
        counts = {entry.model: self.layers_of(entry.model) for entry in recipe.models or []}
        sources = [InputSlice(model=m.model, layer_range=(0, counts[m.model]), parameters=m.parameters) for m in recipe.models or []]
        base = recipe.base_model
        if base is not None and base not in counts and self.method.base != "ignored":
            counts[base] = self.layers_of(base)
            sources.append(InputSlice(model=base, layer_range=(0, counts[base])))
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{ref}: {n}" for ref, n in counts.items())
            raise PlanError(
                f"The models have different layer counts ({detail}).",
                hint="Merge matching layers explicitly with `slices:` and `layer_range`.",
            )
        return [OutputSlice(sources=sources)]

    def check_slice(self, index: int, out_slice: OutputSlice) -> ModelRef | None:
        """Check one slice's sources against the method contract; return its base model."""
        label = f"slices[{index}]" if self.recipe.slices else "models"
        for source in out_slice.sources:
            count = self.layers_of(source.model)
            if source.layer_range[1] > count:
                raise RecipeError(
                    f"{label}: layer_range {list(source.layer_range)} of {source.model} is out of bounds: it has {count} layers.",
                    hint=f"Use a range within [0, {count}].",
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
                hint=f"Adjust the models listed, or choose another method.",
            )
        base = out_slice.base_model or self.recipe.base_model
        others = n - (base in models and method.base != "ignored")
        if others < method.min_non_base or (method.max_non_base is not None and others > method.max_non_base):
            wanted = str(method.min_non_base) if method.max_non_base == method.min_non_base else f"at least {method.min_non_base}"
            raise RecipeError(
                f"{method.name} merges {wanted} model(s) besides the base, but {label} gives {others}.",
                hint="Adjust the models listed, or choose another method.",
            )
        if method.base == "required":
            if base is None:
                raise RecipeError(f"{method.name} needs a `base_model`.", hint="Add `base_model: <model>` to the recipe.")
            if base not in models:
                raise RecipeError(
                    f"{label}: the base model {base} is not among the sources.",
                    hint="Add the base model to the slice's sources.",
                )
        return base if base in models and method.base != "ignored" else None

    def resolve(self, spec_params: Sequence, out_name: str, t: float, out_slice: OutputSlice,
                inputs: list[tuple[InputSlice, str]], base_index: int | None) -> tuple[tuple[str, Any], ...]:
        """Resolve every method parameter for one tensor, by mergekit's precedence."""
        chain: list[Parameters | None] = [out_slice.parameters, self.recipe.parameters]
        resolved: list[tuple[str, Any]] = []
        for spec in spec_params:
            if spec.scope == "shared":
                value = _first_value(spec, chain, out_name, t, where=out_name)
            else:
                values = []
                for i, (source, name) in enumerate(inputs):
                    if spec.scope == "non_base" and i == base_index:
                        values.append(None)
                    else:
                        values.append(_first_value(spec, [source.parameters, *chain], name, t, where=f"{source.model} {name}"))
                value = tuple(values)
            resolved.append((spec.argument, value))
        return tuple(resolved)

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

    def add_job(self, out_name: str, out_slice: OutputSlice, inputs: list[tuple[InputSlice, str]],
                base_ref: ModelRef | None, reference: int, t: float) -> None:
        infos = []
        for source, name in inputs:
            info = self.find_input(source.model, name)
            if info is None:
                self.problems.append(f"{source.model} has no tensor {name!r} (needed for {out_name}).")
                return
            infos.append(info)
        vocab = self.vocab is not None and tensor_group(out_name) != "layer" and all(
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
        params = self.resolve(spec, out_name, t, out_slice, job_inputs, base_index)
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


def _first_value(spec: Any, chain: Sequence[Parameters | None], tensor_name: str, t: float, where: str) -> Any:
    for scope in chain:
        if scope and spec.name in scope:
            value = evaluate_setting(scope[spec.name], tensor_name, t)
            if value is not None:
                return _coerce(spec, value, where)
    if spec.required:
        raise RecipeError(f"Missing required parameter {spec.name!r} for {where}.", hint=f"Set `{spec.name}` in the model's or the recipe's `parameters`.")
    return spec.default


def _coerce(spec: Any, value: Any, where: str) -> Any:
    if spec.type is bool and isinstance(value, bool):
        return value
    if spec.type in (float, int) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return spec.type(value)
    raise RecipeError(f"Parameter {spec.name!r} for {where} must be a {spec.type.__name__}, got {excerpt(value)}.")


def _reference_index(out_slice: OutputSlice, base: ModelRef | None) -> int:
    models = [s.model for s in out_slice.sources]
    return models.index(base) if base in models else 0


def _output_config(planner: _Planner, slices: list[OutputSlice], bases: list[ModelRef | None], ref: ModelRef, total_layers: int,
                   dtype: str | None) -> dict:
    """The merged model's config: the reference model's, with layer count and per-layer lists rebuilt."""
    config = copy.deepcopy(planner.configs[ref])
    target = text_config(config)
    if config_num_layers(config) is not None:
        per_layer = per_layer_keys(config)
        for key in LAYER_COUNT_KEYS:
            if isinstance(target.get(key), int):
                target[key] = total_layers
        for key in per_layer:
            rebuilt = []
            for out_slice, base in zip(slices, bases):
                source = out_slice.sources[_reference_index(out_slice, base)]
                values = text_config(planner.configs[source.model]).get(key) or target[key]
                rebuilt += values[source.layer_range[0] : source.layer_range[1]]
            target[key] = rebuilt
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

    Raises:
        RecipeError: a parameter is unknown, missing or of the wrong type, or the slices are malformed.
        PlanError: the models do not fit together (missing tensors, shapes, layer counts, architectures).
    """
    method = get_method(recipe.merge_method)
    unknown = sorted(n for n in recipe.parameter_names() if method.param(n) is None)
    if unknown:
        known = ", ".join(p.name for p in method.params) or "none"
        raise RecipeError(f"Unknown parameter(s) for {method.name}: {', '.join(unknown)}.", hint=f"{method.name} takes: {known}.")
    refs = recipe.referenced_models()
    planner = _Planner(recipe, method, sources, refs, {ref: sources[ref].config() for ref in refs})
    vocab = vocabulary[1] if vocabulary else None
    planner.vocab = vocab
    slices = planner.output_slices()
    bases = [planner.check_slice(i, s) for i, s in enumerate(slices)]
    planner.problems += _architecture_problems(planner)

    def add_outside_layers(group: str, out_slice: OutputSlice, base: ModelRef | None) -> None:
        ref_index = _reference_index(out_slice, base)
        reference = out_slice.sources[ref_index].model
        for name in sorted(n for n in sources[reference].tensors() if tensor_group(n) == group and is_language_model_tensor(n)):
            planner.add_job(name, out_slice, [(s, name) for s in out_slice.sources], base, ref_index, t=0.0)

    add_outside_layers("pre", slices[0], bases[0])
    out_layer = 0
    for out_slice, base in zip(slices, bases):
        ref_index = _reference_index(out_slice, base)
        reference = out_slice.sources[ref_index]
        length = reference.layer_range[1] - reference.layer_range[0]
        layer_names = {}
        for name in sources[reference.model].tensors():
            parsed = parse_layer_name(name)
            if parsed is not None:
                layer_names.setdefault(parsed.index, []).append(parsed)
        for k in range(length):
            t = k / (length - 1) if length > 1 else 1.0
            for parsed in sorted(layer_names.get(reference.layer_range[0] + k, []), key=lambda p: p.suffix):
                inputs = [(s, parsed.renumbered(s.layer_range[0] + k)) for s in out_slice.sources]
                planner.add_job(parsed.renumbered(out_layer), out_slice, inputs, base, ref_index, t)
            out_layer += 1
    add_outside_layers("post", slices[-1], bases[-1])
    config_ref = recipe.base_model if recipe.base_model in refs else slices[0].sources[0].model
    for name in sorted(n for n in sources[config_ref].tensors() if not is_language_model_tensor(n)):
        planner.add_copy(config_ref, name)  # vision and audio towers, projectors: the base model's, unmerged

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
    config = _output_config(planner, slices, bases, config_ref, out_layer, out_dtype)
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
        vocab=vocab,
        input_dtype=_DTYPE_CODES.get(recipe.dtype or ""),
        num_layers=out_layer,
        peak_memory_bytes=max(_job_memory(j) for j in jobs) + prefetch_bytes,
        warnings=(),
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