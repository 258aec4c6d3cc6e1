"""Recipe + models' headers and configs → a `Plan`: everything a merge will do, checked before any weight is read.

The plan holds one `TensorJob` per output tensor, the shard layout, the output config, vocabulary
row maps, the tokenizer files, chat template and generation config to write, the recipe text,
the seed, the pinned parents and the weight files to verify, and the warnings. `run_merge`, the
`--dry-run`, the card, the Space and the Action all read this one object, and `Plan.to_json` /
`Plan.from_json` carry it whole: executing a plan read back from JSON against the same sources
writes the same bytes.

Planning reads no tensor data and touches no network beyond what the sources already hold
(headers, configs, small files): every name, shape, layer range and parameter is checked here,
so a bad merge fails in seconds instead of after reading gigabytes.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

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
from mergehub.errors import (
    MergehubError,
    PlanError,
    Problem,
    RecipeError,
    RecipeWarning,
    UnknownMethodError,
    excerpt,
    listing,
)
from mergehub.methods import MethodSpec, ParamSpec, get_kernel, get_method
from mergehub.moe.layout import GATES, MOE_RECIPE_FILE, MoELayout
from mergehub.recipe import (
    RECIPE_FILE,
    InputModel,
    ModelRef,
    OutputSlice,
    Parameters,
    Recipe,
    Scope,
    first_setting,
    precedence,
)
from mergehub.sources.adapter import ADAPTER_FILE_PREFIX, AdapterSource
from mergehub.sources.base import ADAPTER_CONFIG, DTYPES, TensorInfo, TensorSource
from mergehub.units import format_size
from mergehub.vocab import (
    OutputTokenizer,
    VocabAlignment,
    align_vocabularies,
    build_output_tokenizer,
    config_updates,
    resolve_chat_template,
    tokenizer_files,
)

__all__ = [
    "InputTensor",
    "JobOutput",
    "TensorJob",
    "AdapterEntry",
    "ModelEntry",
    "InputFile",
    "TensorSlot",
    "ShardLayout",
    "Plan",
    "plan_merge",
    "peak_memory",
    "read_ahead_bytes",
    "layout_shards",
    "embedding_rows",
    "model_entry",
    "input_files",
    "DEFAULT_SHARD_BYTES",
    "EXTRACT_METHOD",
    "EXTRACTION_FILE",
    "PLAN_FORMAT",
    "READ_AHEAD_LIMITS",
    "RETAINED_HEAP_BYTES",
    "RUNTIME_BYTES",
    "CHUNK_ELEMENTS",
]

DEFAULT_SHARD_BYTES = 5 * 1000**3
EXTRACT_METHOD = "extract_lora"
"""The method of a LoRA extraction's plan (see `mergehub.extraction`)."""
EXTRACTION_FILE = "mergehub_extract.yml"
"""An extraction's file form, written beside its adapter as a merge's recipe is (its `recipe_text`)."""
PLAN_FORMAT = 1
"""The version of `Plan.to_json`'s format; `Plan.from_json` refuses others."""
READ_AHEAD_LIMITS = (32 * 2**20, 256 * 2**20)
RUNTIME_BYTES = 48 * 2**20
"""What a merge holds beyond its tensors once running: torch's kernels and thread pools on first use, in the
merging, reading and writing threads (measured: 45-50 MiB above the import of mergehub.api)."""
RETAINED_HEAP_BYTES = 64 * 2**20
"""Free memory that malloc may keep on top of the merging thread's heap for the next chunk-sized scratch tensors,
instead of returning it to the system (glibc's trim threshold, set by the executor)."""
CHUNK_ELEMENTS = 1 << 18
"""Elements per chunk of an elementwise merge: a cache-sized piece, widened into buffers allocated once."""
_DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
_CODE_NAMES = {v: k for k, v in _DTYPE_CODES.items()}
_COPY = get_method("passthrough")
"""The method of tensors copied unchanged (not floating point, or outside the merge)."""

Scalar = bool | int | float | str | None
ParamValue = Scalar | tuple[Scalar, ...]
"""A resolved parameter: one value, or one per input model (None at the base for `non_base` parameters)."""


@dataclass(frozen=True)
class InputTensor:
    """One input of a job: tensor `name` of the model whose key (`ModelEntry.ref`) is `model`."""

    model: str
    name: str


@dataclass(frozen=True)
class JobOutput:
    """One of several tensors a job writes (an extraction's lora_A and lora_B): the kernel's output `role`, the
    tensor's name, dtype, and largest shape (an extraction's rank is decided by the data, up to a bound)."""

    role: str
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class TensorJob:
    """How one output tensor is made: its inputs, the method, and resolved parameters.

    A job with `outputs` writes those tensors (its kernel returns them by role) instead of one named `name`.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    method: str
    inputs: tuple[InputTensor, ...]
    base_index: int | None
    params: tuple[tuple[str, ParamValue], ...]
    read_bytes: int
    vocab: bool = False
    """Whether the inputs are re-indexed onto the output vocabulary (rows) before merging."""
    outputs: tuple[JobOutput, ...] = ()


@dataclass(frozen=True)
class AdapterEntry:
    """A LoRA adapter applied to an input model as it streams: its reference as written, its directory or Hub repo
    ID, and the commit it is pinned to (None for a directory)."""

    ref: str
    path: str
    revision: str | None
    gated: bool = False

    @property
    def pinned(self) -> str:
        """`repo@commit` for a Hub adapter, the path for a directory."""
        return f"{self.path}@{self.revision}" if self.revision else self.path


@dataclass(frozen=True)
class ModelEntry:
    """An input model: its key (the reference as the recipe writes it, `org/name@rev+org/lora`), the commit it is
    pinned to, what is read from it, and the LoRA adapter applied to it."""

    ref: str
    revision: str | None
    """The commit every read is pinned to (None for a local directory)."""
    read_bytes: int
    gated: bool = False
    adapter: AdapterEntry | None = None

    @property
    def path(self) -> str:
        """The model's directory or Hub repo ID, without its revision or adapter."""
        model = self.ref.removesuffix(f"+{self.adapter.ref}") if self.adapter else self.ref
        return (model.rpartition("@")[0] or model) if self.revision is not None else model

    @property
    def pinned(self) -> ModelRef:
        """The reference at its pinned commits (the model's and its adapter's), to open it exactly as planned."""
        ref = ModelRef.parse(self.ref)
        adapter = self.adapter and ModelRef(self.adapter.path, self.adapter.revision)
        return ModelRef(ref.path, self.revision or ref.revision, adapter or ref.adapter)


@dataclass(frozen=True)
class InputFile:
    """A weight file a Hub model's tensors are read from, and whether its bytes are checked on arrival.

    A file the merge reads whole is hashed as it streams and compared with the sha256 the Hub
    lists (`verified`); otherwise `reason` says why it is not.
    """

    model: str
    file: str
    verified: bool
    reason: str = ""


@dataclass(frozen=True)
class TensorSlot:
    """One tensor's place in a shard: name, dtype code, shape and data offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class ShardLayout:
    """One output file and the tensors it holds, in write order."""

    filename: str
    slots: tuple[TensorSlot, ...]

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data in the shard."""
        return self.slots[-1].end if self.slots else 0


def layout_shards(entries: Sequence[tuple[str, str, tuple[int, ...]]], max_shard_bytes: int) -> tuple[ShardLayout, ...]:
    """Assign `(name, dtype, shape)` tensors in order to shards of at most `max_shard_bytes` of data.

    A tensor larger than the limit gets a shard of its own. Files are named
    `model-0000i-of-0000N.safetensors`, as transformers names them.
    """
    groups: list[list[TensorSlot]] = [[]]
    offset = 0
    for name, dtype, shape in entries:
        nbytes = DTYPES[dtype].itemsize
        for dim in shape:
            nbytes *= dim
        if groups[-1] and offset + nbytes > max_shard_bytes:
            groups.append([])
            offset = 0
        groups[-1].append(TensorSlot(name, dtype, tuple(shape), offset, offset + nbytes))
        offset += nbytes
    total = len(groups)
    return tuple(
        ShardLayout(f"model-{i + 1:05d}-of-{total:05d}.safetensors", tuple(slots)) for i, slots in enumerate(groups)
    )


@dataclass(frozen=True)
class Plan:
    """Everything a merge will do, before any weight is read; `to_json`/`from_json` carry it whole."""

    __pydantic_config__ = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    method: str
    models: tuple[ModelEntry, ...]
    """The input models, base first, then in recipe order: the keys the jobs name, pinned to their commits."""
    jobs: tuple[TensorJob, ...]
    shards: tuple[ShardLayout, ...]
    config: dict = field(hash=False)
    """The merged model's config.json."""
    config_model: str
    """The key of the model whose config, tensor names and generation config the output follows."""
    base_model: str | None
    """The key of the recipe's `base_model`, if it has one."""
    input_dtype: str | None
    num_layers: int | None
    peak_memory_bytes: int
    """The merge's estimated peak memory above the import of mergehub (`peak_memory`), for the executor's defaults."""
    recipe_text: str = ""
    """The recipe as written (its comments kept): the output's mergekit_config.yml."""
    seed: int = 0
    """The seed of random methods (each tensor draws from its own generator, seeded from this and its name)."""
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    vocab: VocabAlignment | None = None
    """Each model's row map onto the output vocabulary, when the recipe merges vocabularies."""
    tokenizer_files: dict[str, bytes] = field(default_factory=dict, hash=False)
    """The tokenizer files to write, by name: the output tokenizer built for the recipe, else the config model's
    files."""
    chat_template: str | None = None
    """The recipe's `chat_template`, resolved (written as chat_template.jinja); None keeps the tokenizer's own."""
    generation_config: bytes | None = None
    """The config model's generation_config.json, copied."""
    warnings: tuple[RecipeWarning, ...] = ()
    """What the recipe sets that is ignored (as mergekit ignores it), each with its location and line."""
    input_files: tuple[InputFile, ...] = ()
    """The Hub models' weight files the merge reads from, and which of them are verified in transit."""
    moe: MoELayout | None = None
    """For an MoE assembly: its architecture, experts and router computation (router jobs read the key `GATES`)."""
    stages: tuple[StageSummary, ...] = ()
    """For the final stage of a multi-stage recipe: every stage in running order (`recipe_text` is the whole file)."""
    format: int = PLAN_FORMAT

    @property
    def read_bytes(self) -> int:
        """Bytes read from all input models."""
        return sum(m.read_bytes for m in self.models)

    @property
    def write_bytes(self) -> int:
        """Bytes of tensor data written."""
        return sum(shard.data_bytes for shard in self.shards)

    def model(self, key: str) -> ModelEntry:
        """The input model whose key is `key`."""
        return next(m for m in self.models if m.ref == key)

    def output_files(self) -> dict[str, bytes]:
        """The files written beside the weights, by name: config, recipe, generation config, tokenizer, chat
        template (for an extraction: the adapter config as planned, and the extraction file)."""
        if self.method == EXTRACT_METHOD:  # the config as planned: `extraction.adapter_config` gives each module's rank
            return {
                ADAPTER_CONFIG: (json.dumps(self.config, indent=2) + "\n").encode(),
                EXTRACTION_FILE: self.recipe_text.encode(),
            }
        recipe_file = MOE_RECIPE_FILE if self.moe else RECIPE_FILE
        files = {
            "config.json": (json.dumps(self.config, indent=2) + "\n").encode(),
            recipe_file: self.recipe_text.encode(),
        }
        if self.generation_config is not None:
            files["generation_config.json"] = self.generation_config
        files.update(self.tokenizer_files)
        if self.chat_template is not None:
            files["chat_template.jinja"] = self.chat_template.encode()
        return files

    def to_json(self) -> str:
        """The plan as JSON (round-trips through `Plan.from_json`; file contents as base64)."""
        return _plan_adapter().dump_json(self, indent=1).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        """Rebuild a plan written by `to_json`.

        Raises:
            PlanError: the text is not a plan of this format.
        """
        try:
            plan = _plan_adapter().validate_json(text)
        except ValidationError as e:
            raise PlanError(
                f"Not a mergehub plan: {excerpt(str(e), 300)}", hint="Give the output of `Plan.to_json()`."
            ) from e
        if plan.format != PLAN_FORMAT:
            raise PlanError(
                f"The plan's format is {plan.format}; this mergehub reads format {PLAN_FORMAT}.",
                hint="Plan the recipe again with this version of mergehub.",
            )
        return plan

    def describe(self) -> str:
        """A human-readable account of the plan, for `--dry-run`: models, output, warnings, then every tensor."""
        number: dict[str, int | str] = {m.ref: i for i, m in enumerate(self.models)}
        number[GATES] = "gates"
        what = "LoRA extraction from" if self.method == EXTRACT_METHOD else f"{self.method} merge of"
        lines = [f"Plan: {what} {len(self.models)} models into {len(self.jobs)} tensors"]
        lines.append("Input models (bytes to read):")
        for i, m in enumerate(self.models):
            lines.append(f"  [{i}] {m.ref}{' @ ' + m.revision if m.revision else ''}: {format_size(m.read_bytes)}")
            if m.adapter is not None:
                at = f" @ {m.adapter.revision}" if m.adapter.revision else ""
                lines.append(f"      LoRA adapter {m.adapter.path}{at}, merged in as it streams")
        layers = f"; layers: {self.num_layers}" if self.num_layers else ""
        lines.append(f"Output: {len(self.shards)} shard(s), {format_size(self.write_bytes)}{layers}")
        files = self.output_files()
        lines.append(
            "Files: " + ", ".join(f"{name} ({format_size(len(data))})" for name, data in sorted(files.items()))
        )
        if self.vocab is not None:
            lines.append(
                f"Vocabulary: {self.vocab.size} tokens in {self.vocab.rows} rows, each model's rows re-indexed "
                "onto them"
            )
        lines.append(f"Estimated peak memory above start-up: {format_size(self.peak_memory_bytes)}")
        lines += self._moe_lines()
        lines += [f"Warning: {w}" for w in self.warnings]
        lines.append("Tensors:")
        for job in self.jobs:
            sources = ", ".join(f"[{number[i.model]}]{'' if i.name == job.name else ':' + i.name}" for i in job.inputs)
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in job.params)
            lines.append(
                f"  {job.name} {job.dtype}{list(job.shape)} <- {job.method}({sources}){' ' + params if params else ''}"
            )
            lines += [f"    -> {o.name} {o.dtype} up to {list(o.shape)}" for o in job.outputs]
        if self.input_files:
            checked = sum(f.verified for f in self.input_files)
            lines.append(
                f"Hub weight files checked against their sha256 as they stream: {checked} of {len(self.input_files)}"
            )
            lines += [
                f"  not checked: [{number[f.model]}] {f.file} ({f.reason})" for f in self.input_files if not f.verified
            ]
        return "\n".join(lines)

    def _moe_lines(self) -> list[str]:
        """The MoE's architecture, experts and router computation, for `describe`."""
        if self.moe is None:
            return []
        moe, gates = self.moe, self.moe.gates
        routed = [e for e in moe.experts if not e.shared]
        shared = len(moe.experts) - len(routed)
        lines = [
            f"MoE: {moe.architecture}, {len(routed)} experts, {moe.experts_per_token} per token"
            + (f", {shared} shared" if shared else "")
        ]
        how = {
            "random": f"drawn from seed {gates.seed}",
            "uniform_random": f"drawn from seed {gates.seed}",
            "cheap_embed": "the prompts' token embeddings",
        }.get(gates.mode, "the base's hidden states over the prompts")
        lines.append(f"Routers ({gates.mode}): {how}, computed before the merge for {gates.num_layers} layers")
        if len(routed) & (len(routed) - 1):
            lines.append(f"Note: {len(routed)} experts is not a power of two: llama.cpp cannot run the model.")
        for expert in moe.experts:
            prompts = f"+{len(expert.positive_prompts)}" + (
                f"/-{len(expert.negative_prompts)}" if expert.negative_prompts else ""
            )
            lines.append(f"  {'shared' if expert.shared else 'expert'} {expert.model}: prompts {prompts}")
        return lines


@dataclass(frozen=True)
class StageSummary:
    """One stage of a multi-stage recipe as the final stage's plan records it: name (None: the final), method, inputs.

    An input whose `ref` names an earlier stage is that stage's output; the others are models, pinned.
    """

    name: str | None
    method: str
    models: tuple[ModelEntry, ...]


@functools.cache
def _plan_adapter() -> TypeAdapter[Plan]:
    return TypeAdapter(Plan)


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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


@dataclass
class _Planner:
    """Mutable state used while building one plan; discarded afterwards."""

    recipe: Recipe
    method: MethodSpec
    sources: Mapping[ModelRef, TensorSource]
    refs: list[ModelRef]
    configs: dict[ModelRef, dict]
    vocab: VocabAlignment | None = None
    problems: list[Problem] = field(default_factory=list)
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
        indices = [
            p.index for n in self.sources[ref].tensors() if self.in_module(n, module) and (p := split_layer_name(n))
        ]
        return max(indices) + 1 if indices else 0

    def slices_from_models(self, models: list[InputModel], where: str, module: str) -> _Slice:
        """`models:` as mergekit reads it: one slice over all layers, the base model added when not listed."""
        prefix = f"{where}." if where else ""
        sources = [
            _Source(m.model, (0, self.layers_of(m.model, module)), m.parameters, f"{prefix}models[{i}]")
            for i, m in enumerate(models)
        ]
        base = self.recipe.base_model
        if base is not None and base not in [m.model for m in models]:
            sources.append(_Source(base, (0, self.layers_of(base, module)), None, "base_model"))
        counts = {s.model: s.layer_range[1] for s in sources}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{ref}: {n}" for ref, n in counts.items())
            what = "" if module == DEFAULT_MODULE else f" in {module}"
            odd = next(s for s in sources if s.layer_range[1] != sources[0].layer_range[1])
            raise PlanError(
                f"The models have different layer counts{what} ({detail}).",
                hint="Merge matching layers explicitly with `slices:` and `layer_range`.",
                location=odd.location,
                line=self.recipe.line_of(odd.location),
            )
        return _Slice(tuple(sources), None, None, f"{prefix}models")

    def slices_from_recipe(self, slices: list[OutputSlice], where: str) -> tuple[_Slice, ...]:
        prefix = f"{where}." if where else ""
        return tuple(
            _Slice(
                tuple(
                    _Source(s.model, s.layer_range, s.parameters, f"{prefix}slices[{i}].sources[{j}]")
                    for j, s in enumerate(out.sources)
                ),
                out.base_model,
                out.parameters,
                f"{prefix}slices[{i}]",
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
                        f"modules.{name}: {config_ref} has no module {name!r}.",
                        hint=f"Its modules are: {', '.join(available)}.",
                        location=f"modules.{name}",
                        line=recipe.line_of(f"modules.{name}"),
                    )
            modules = []
            for name, module in recipe.modules.items():
                where = f"modules.{name}"
                slices = (
                    self.slices_from_recipe(module.slices, where)
                    if module.slices
                    else (self.slices_from_models(module.models or [], where, name),)
                )
                modules.append(_Module(name, slices, module.parameters, where, bool(module.slices)))
            for name in available:
                if name not in recipe.modules:
                    count = sum(self.in_module(n, name) for n in self.sources[config_ref].tensors())
                    self.warnings.append(
                        recipe.warning(
                            "modules",
                            f"module `{name}` is not listed: its {count} tensors are left out of the output, "
                            "as mergekit does.",
                        )
                    )
            return modules, []
        if recipe.models:
            return [
                _Module(name, (self.slices_from_models(recipe.models, "", name),), None, "", False)
                for name in available
            ], []
        main = available[0]
        copied = available[1:]
        if copied:
            self.warnings.append(
                recipe.warning(
                    "slices",
                    f"{', '.join(copied)}: copied unmerged from {config_ref}; `slices:` apply to the language model "
                    "(mergekit refuses `slices:` on a model with several modules: use `modules:` to merge them too).",
                )
            )
        return [_Module(main, self.slices_from_recipe(recipe.slices or [], ""), None, "", True)], copied

    def check_slice(self, module: _Module, out_slice: _Slice) -> ModelRef | None:
        """Check one slice's sources against the method's input contract, as mergekit does; return its base model."""
        label = out_slice.location
        for source in out_slice.sources:
            count = self.layers_of(source.model, module.name)
            if source.layer_range[1] > count:
                raise RecipeError(
                    f"{label}: layer_range {list(source.layer_range)} of {source.model} is out of bounds: it "
                    f"has {count} layers.",
                    hint=f"Use a range within [0, {count}].",
                    location=f"{source.location}.layer_range",
                    line=self.recipe.line_of(f"{source.location}.layer_range"),
                )
        lengths = {s.layer_range[1] - s.layer_range[0] for s in out_slice.sources}
        where = {"location": label, "line": self.recipe.line_of(label)}
        if len(lengths) > 1:
            raise RecipeError(
                f"{label}: sources cover different numbers of layers ({sorted(lengths)}).",
                hint="Give every source of a slice layer ranges of one length.",
                **where,
            )
        models = [s.model for s in out_slice.sources]
        if len(set(models)) != len(models):
            raise RecipeError(
                f"{label}: a model appears twice among the sources.", hint="List each model once per slice.", **where
            )
        method = self.method
        n = len(models)
        if n < method.min_inputs or (method.max_inputs is not None and n > method.max_inputs):
            wanted = (
                str(method.min_inputs)
                if method.max_inputs == method.min_inputs
                else (
                    f"at least {method.min_inputs}"
                    if method.max_inputs is None
                    else f"{method.min_inputs} to {method.max_inputs}"
                )
            )
            raise RecipeError(
                f"{method.name} merges {wanted} model(s) per tensor, but {label} gives {n}.",
                hint="Adjust the models listed, or choose another method.",
                **where,
            )
        base = None if method.base == "ignored" else out_slice.base_model or self.recipe.base_model
        if base is not None and base not in models:
            raise RecipeError(
                f"{label}: the base model {base} is not among the sources.",
                hint="Add the base model to the slice's sources.",
                **where,
            )
        if method.base == "required" and base is None:
            raise RecipeError(
                f"{method.name} needs a `base_model`.",
                hint="Add `base_model: <model>` to the recipe.",
                location="merge_method",
                line=self.recipe.line_of("merge_method"),
            )
        others = n - (base is not None)
        if others < method.min_non_base or (method.max_non_base is not None and others > method.max_non_base):
            wanted = (
                str(method.min_non_base)
                if method.max_non_base == method.min_non_base
                else f"at least {method.min_non_base}"
            )
            raise RecipeError(
                f"{method.name} merges {wanted} model(s) besides the base, but {label} gives {others}.",
                hint="Adjust the models listed, or choose another method.",
                **where,
            )
        return base

    def scopes(self, module: _Module, out_slice: _Slice, source: _Source | None = None) -> list[Scope]:
        """Where a parameter of this slice (and of `source`, for a per-model one) may be set, by mergekit's
        precedence."""
        own = (f"{source.location}.parameters", source.parameters) if source else None
        return precedence(
            own,
            (f"{out_slice.location}.parameters", out_slice.parameters),
            (f"{module.location}.parameters".lstrip("."), module.parameters),
            self.recipe,
        )

    def resolve(
        self,
        specs: Sequence[ParamSpec],
        out_name: str,
        t: float,
        module: _Module,
        out_slice: _Slice,
        inputs: list[tuple[_Source, str]],
        base_index: int | None,
    ) -> tuple[tuple[str, Any], ...]:
        """Resolve every method parameter for one tensor, by mergekit's precedence."""
        resolved: list[tuple[str, Any]] = []
        for spec in specs:
            if spec.scope == "shared":
                value = self.first_value(spec, self.scopes(module, out_slice), out_name, t, where=out_name)
            else:
                values = []
                for i, (source, name) in enumerate(inputs):
                    if spec.scope == "non_base" and i == base_index:
                        values.append(None)
                    else:
                        scopes = self.scopes(module, out_slice, source)
                        values.append(self.first_value(spec, scopes, name, t, where=f"{source.model} {name}"))
                value = tuple(values)
            resolved.append((spec.argument, value))
        return tuple(resolved)

    def first_value(self, spec: ParamSpec, scopes: list[Scope], tensor_name: str, t: float, where: str) -> Any:
        """The value of a parameter from the first scope that sets one for this tensor, read as the parameter's type."""
        found = first_setting(scopes, spec.name, tensor_name, t, _validator(spec, self.recipe))
        if found is not None:
            return found[0]
        if spec.required:
            location = scopes[0][0]
            raise RecipeError(
                f"Missing required parameter {spec.name!r} for {where}.",
                hint=f"Set `{spec.name}` in the model's or the recipe's `parameters`.",
                location=location,
                line=self.recipe.line_of(location),
            )
        return spec.default

    def find_input(self, ref: ModelRef, name: str) -> TensorInfo | None:
        tensors = self.sources[ref].tensors()
        if name in tensors:
            return tensors[name]
        if name.endswith("lm_head.weight"):  # tied embeddings: transformers reads the input embedding
            for candidate in tensors.values():
                if (
                    tensor_group(candidate.name) == "pre"
                    and is_language_model_tensor(candidate.name)
                    and "embed" in candidate.name
                    and candidate.name.endswith("weight")
                ):
                    return candidate
        return None

    def add_copy(self, ref: ModelRef, name: str) -> None:
        """A job that copies one tensor of `ref` unchanged but for the output dtype (a vision tower's, say)."""
        info = self.sources[ref].tensors()[name]
        floating = DTYPES[info.dtype].is_floating_point
        dtype = (
            _DTYPE_CODES.get(self.recipe.out_dtype or self.recipe.dtype or "", info.dtype) if floating else info.dtype
        )
        self.read_bytes[ref] = self.read_bytes.get(ref, 0) + info.nbytes
        self.jobs.append(
            TensorJob(
                name=name,
                shape=info.shape,
                dtype=dtype,
                method=_COPY.name,
                inputs=(InputTensor(str(ref), name),),
                base_index=None,
                params=tuple((p.argument, p.default_for(1, None)) for p in _COPY.params),
                read_bytes=info.nbytes,
            )
        )

    def add_job(
        self,
        out_name: str,
        module: _Module,
        out_slice: _Slice,
        inputs: list[tuple[_Source, str]],
        base_ref: ModelRef | None,
        reference: int,
        t: float,
    ) -> None:
        infos = []
        for source, name in inputs:
            info = self.find_input(source.model, name)
            if info is None:
                self.problems.append(
                    self.recipe.problem(
                        source.location, f"{source.model} has no tensor {name!r} (needed for {out_name})."
                    )
                )
                return
            infos.append(info)
        vocab = (
            self.vocab is not None
            and is_language_model_tensor(out_name)
            and tensor_group(out_name) != "layer"
            and all(
                len(info.shape) == 2 and info.shape[0] == embedding_rows(self.sources[s.model])
                for (s, _), info in zip(inputs, infos)
            )
        )
        shapes = {info.shape[1:] if vocab else info.shape for info in infos}
        if len(shapes) > 1:
            detail = ", ".join(f"{s.model}: {list(i.shape)}" for (s, _), i in zip(inputs, infos))
            vocab_like = "embed" in out_name or "lm_head" in out_name
            hint = " The vocabularies differ: set `tokenizer_source` (base, union or a model)." if vocab_like else ""
            first = infos[0].shape[1:] if vocab else infos[0].shape
            odd = next(s for (s, _), i in zip(inputs, infos) if (i.shape[1:] if vocab else i.shape) != first)
            self.problems.append(self.recipe.problem(odd.location, f"{out_name}: shapes differ ({detail}).{hint}"))
            return
        floating = all(DTYPES[i.dtype].is_floating_point for i in infos)
        method = self.method.name if floating else _COPY.name
        job_inputs = inputs
        base_index = next((i for i, (s, _) in enumerate(inputs) if s.model == base_ref), None)
        if not floating:
            job_inputs, infos, base_index = [inputs[reference]], [infos[reference]], None
        spec = self.method.params if floating else _COPY.params
        params = self.resolve(spec, out_name, t, module, out_slice, job_inputs, base_index)
        dtype = (
            _DTYPE_CODES.get(
                self.recipe.out_dtype or self.recipe.dtype or "", infos[min(reference, len(infos) - 1)].dtype
            )
            if floating
            else infos[0].dtype
        )
        for (source, _), info in zip(job_inputs, infos):
            self.read_bytes[source.model] = self.read_bytes.get(source.model, 0) + info.nbytes
        shape = (self.vocab.rows, *infos[0].shape[1:]) if vocab and self.vocab else infos[0].shape
        self.jobs.append(
            TensorJob(
                name=out_name,
                shape=shape,
                dtype=dtype,
                method=method,
                inputs=tuple(InputTensor(str(s.model), i.name) for (s, _), i in zip(job_inputs, infos)),
                base_index=base_index,
                params=params,
                read_bytes=sum(i.nbytes for i in infos),
                vocab=vocab and floating,
            )
        )

    def plan_module(self, module: _Module, bases: list[ModelRef | None]) -> int:
        """Jobs for one module: the tensors before its layers, each output layer, the tensors after; returns its layer
        count."""
        first, last = module.slices[0], module.slices[-1]

        def add_outside_layers(group: str, out_slice: _Slice, base: ModelRef | None) -> None:
            ref_index = out_slice.reference_index(base)
            reference = out_slice.sources[ref_index].model
            for name in sorted(
                n
                for n in self.sources[reference].tensors()
                if self.in_module(n, module.name) and module_group(n) == group
            ):
                self.add_job(name, module, out_slice, [(s, name) for s in out_slice.sources], base, ref_index, t=0.0)

        add_outside_layers("pre", first, bases[0])
        out_layer = 0
        for out_slice, base in zip(module.slices, bases):
            ref_index = out_slice.reference_index(base)
            reference = out_slice.sources[ref_index]
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
                    self.add_job(parsed.renumbered(out_layer), module, out_slice, inputs, base, ref_index, t)
                out_layer += 1
        add_outside_layers("post", last, bases[-1])
        return out_layer

    def parameter_warnings(self, modules: list[_Module], bases: dict[_Slice, ModelRef | None]) -> None:
        """A warning for each parameter mergekit would ignore: unknown to the method, shared but set per model, or per
        model on the base."""
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
                    takes = (
                        f"did you mean `{close[0]}`?"
                        if close
                        else f"{method.name} takes: {', '.join(known) or 'no parameters'}"
                    )
                    self.warnings.append(
                        recipe.warning(location, f"`{name}` is not a {method.name} parameter: ignored ({takes}).")
                    )
                elif where in per_model and spec.scope == "shared":
                    self.warnings.append(
                        recipe.warning(
                            location,
                            f"`{name}` is one value for all models in {method.name}, so a model's own `{name}` "
                            "is ignored "
                            "(set it in the recipe's or the slice's `parameters`).",
                        )
                    )
                elif where in per_model and spec.scope == "non_base" and per_model[where] == base_of[where]:
                    self.warnings.append(
                        recipe.warning(location, f"`{name}` is not used for the base model by {method.name}: ignored.")
                    )


def _with_ignored(error: RecipeError, warnings: Sequence[RecipeWarning]) -> RecipeError:
    """The error, its hint also naming what the recipe sets that is ignored: a misplaced key is often the cause."""
    if not warnings:
        return error
    ignored = "; ".join(str(w) for w in warnings[:3]) + (f"; and {len(warnings) - 3} more" if len(warnings) > 3 else "")
    hint = f"{error.hint + ' ' if error.hint else ''}Ignored in this recipe: {ignored}"
    return type(error)(
        error.headline,
        hint=hint,
        location=error.location,
        line=error.line,
        problems=error.problems,
        warnings=error.warnings,
    )


@functools.cache
def _adapter(kind: type) -> TypeAdapter:
    return TypeAdapter(kind)


def _validator(spec: ParamSpec, recipe: Recipe) -> Callable[[Any, str], Any]:
    """Read a setting's scalar as the parameter's type, the way mergekit's pydantic does (`"1e-5"` is a float)."""

    def validate(value: Any, location: str) -> Any:
        try:
            return _adapter(spec.type).validate_python(value)
        except ValidationError as e:
            raise RecipeError(
                f"{location}: {excerpt(value)} is not a {spec.type.__name__}.",
                hint=f"Write `{spec.name}` as a {spec.type.__name__}, e.g. {spec.name}: {_example(spec.type)}.",
                location=location,
                line=recipe.line_of(location),
            ) from e

    return validate


def _example(kind: type) -> str:
    return {bool: "true", int: "10", float: "0.5"}.get(kind, "...")


def _output_config(
    planner: _Planner, modules: list[_Module], bases: dict[_Slice, ModelRef | None], ref: ModelRef, dtype: str | None
) -> dict:
    """The merged model's config: the reference model's, with each sliced module's layer count and per-layer lists
    rebuilt."""
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


def _architecture_problems(planner: _Planner) -> list[Problem]:
    kinds = {
        ref: tuple(planner.configs[ref].get("architectures") or [planner.configs[ref].get("model_type")])
        for ref in planner.refs
    }
    if len(set(kinds.values())) <= 1:
        return []
    detail = ", ".join(f"{ref}: {'/'.join(map(str, k))}" for ref, k in kinds.items())
    return [Problem("", f"The models have different architectures ({detail}).")]


def plan_merge(
    recipe: Recipe,
    sources: Mapping[ModelRef, TensorSource],
    *,
    out_shard_bytes: int = DEFAULT_SHARD_BYTES,
    seed: int = 0,
    strict: bool = False,
) -> Plan:
    """Build and check the whole plan of a merge from the recipe and the models' headers, configs and small files.

    `sources` holds every model the recipe references, keyed by its reference (see `open_sources`).
    What mergekit would ignore (parameters a method does not take, unknown keys, modules not
    listed) is ignored here too, and listed in `Plan.warnings`; with `strict`, any such warning is an error.

    Raises:
        RecipeError: a parameter is missing or of the wrong type, the slices, modules or tokenizer settings
            are malformed, or (with `strict`) the recipe has warnings.
        PlanError: the models do not fit together (missing tensors, shapes, layer counts, architectures).
    """
    try:
        method = get_method(recipe.merge_method)
    except UnknownMethodError as e:
        recipe.locate(e, "merge_method")
        raise
    refs = recipe.referenced_models()
    missing = [str(ref) for ref in refs if ref not in sources]
    if missing:
        raise PlanError(
            f"No source was opened for {', '.join(missing)}.",
            hint="Open the recipe's models with `open_sources(recipe)`.",
        )
    planner = _Planner(recipe, method, sources, refs, {ref: sources[ref].config() for ref in refs})
    config_ref = recipe.base_model if recipe.base_model in refs else refs[0]
    files_of = functools.cache(lambda ref: tokenizer_files(sources[ref]))
    tokenizer = _output_vocabulary(recipe, sources, files_of)
    if tokenizer is not None:
        planner.vocab = tokenizer[1]
    modules, copied = planner.output_modules(config_ref)
    bases = {out_slice: planner.check_slice(module, out_slice) for module in modules for out_slice in module.slices}
    planner.parameter_warnings(modules, bases)
    planner.problems += _architecture_problems(planner)
    try:
        layers = {module.name: planner.plan_module(module, [bases[s] for s in module.slices]) for module in modules}
    except RecipeError as e:
        raise _with_ignored(e, (*recipe.warnings, *planner.warnings)) from e
    for name in sorted(n for n in sources[config_ref].tensors() if module_of(n) in copied):
        planner.add_copy(
            config_ref, name
        )  # towers and projectors beside sliced language layers: the base model's, unmerged

    if planner.problems:
        raise PlanError(
            f"The merge cannot be planned ({len(planner.problems)} problem(s)):",
            hint="Check that the models share an architecture and sizes, and that the recipe names the right layers.",
            problems=tuple(planner.problems),
        )
    if not planner.jobs:
        raise PlanError("The merge produces no tensors.", hint="Check the recipe's models and layer ranges.")
    warnings = tuple(recipe.warnings) + tuple(planner.warnings)
    if strict and warnings:
        raise RecipeError(
            f"The recipe sets {len(warnings)} thing(s) that would be ignored (strict mode):" + listing(warnings),
            hint="Remove or fix them, or merge without strict mode to ignore them as mergekit does.",
            warnings=warnings,
            remedy="strict",
        )

    out_dtype = _DTYPE_CODES.get(recipe.out_dtype or recipe.dtype or "")
    config = _output_config(planner, modules, bases, config_ref, out_dtype)
    if tokenizer is not None:
        text_config(config).update(config_updates(tokenizer[0], tokenizer[1].rows, text_config(config)))
    jobs = tuple(planner.jobs)
    return Plan(
        method=method.name,
        models=tuple(model_entry(ref, sources[ref], planner.read_bytes.get(ref, 0)) for ref in refs),
        jobs=jobs,
        shards=layout_shards([(j.name, j.dtype, j.shape) for j in jobs], out_shard_bytes),
        config=config,
        config_model=str(config_ref),
        base_model=str(recipe.base_model) if recipe.base_model else None,
        input_dtype=_DTYPE_CODES.get(recipe.dtype or ""),
        num_layers=layers.get(DEFAULT_MODULE, layers.get(TEXT_MODULE)),
        peak_memory_bytes=peak_memory(jobs),
        recipe_text=recipe.text,
        seed=seed,
        max_shard_bytes=out_shard_bytes,
        vocab=planner.vocab,
        tokenizer_files=dict(tokenizer[0].files) if tokenizer is not None else dict(files_of(config_ref)),
        chat_template=_chat_template(recipe, refs, files_of),
        generation_config=sources[config_ref].read_file("generation_config.json"),
        warnings=warnings,
        input_files=input_files(jobs, refs, sources),
    )


def _chat_template(
    recipe: Recipe, refs: Sequence[ModelRef], files_of: Callable[[ModelRef], Mapping[str, bytes]]
) -> str | None:
    """The recipe's `chat_template`, resolved against the models' own templates (read only when it is set)."""
    if not recipe.chat_template:
        return None
    try:
        return resolve_chat_template(recipe.chat_template, {str(ref): files_of(ref) for ref in refs})
    except MergehubError as e:
        recipe.locate(e, "chat_template")
        raise


def model_entry(ref: ModelRef, source: TensorSource, read_bytes: int) -> ModelEntry:
    """The plan's record of an input model: its key, pinned commit(s), gating and the bytes read from it."""
    adapter = None
    if ref.adapter is not None and isinstance(source, AdapterSource):
        adapter = AdapterEntry(str(ref.adapter), ref.adapter.path, source.adapter.revision, bool(source.adapter.gated))
    return ModelEntry(str(ref), source.revision, read_bytes, bool(source.gated), adapter)


def input_files(
    jobs: Sequence[TensorJob], refs: Sequence[ModelRef], sources: Mapping[ModelRef, TensorSource]
) -> tuple[InputFile, ...]:
    """Each Hub model's (and Hub adapter's) weight files the jobs read from: verified when read whole and the Hub
    lists a sha256."""
    read: dict[str, set[str]] = {}
    for job in jobs:
        for item in job.inputs:
            read.setdefault(item.model, set()).add(item.name)
    files = []
    for ref in refs:
        source, key = sources[ref], str(ref)
        if key not in read:
            continue
        for file, (used, total) in sorted(source.files_read(read[key]).items()):
            adapter_file = file.startswith(ADAPTER_FILE_PREFIX)
            if (
                source.adapter.revision if adapter_file and isinstance(source, AdapterSource) else source.revision
            ) is None:
                continue  # a local file: nothing travels
            whole = used == total
            reason = (
                ""
                if whole and file in source.checksums
                else "read in part"
                if not whole
                else "no sha256 in the repo listing, or checks are off"
            )
            files.append(InputFile(key, file, not reason, reason))
    return tuple(files)


def read_ahead_bytes(read_bytes: int) -> int:
    """How many input bytes the executor reads ahead of the tensor it merges: a sixteenth of what the merge reads,
    within `READ_AHEAD_LIMITS`, so a small merge stays small and a large one keeps its reads busy."""
    low, high = READ_AHEAD_LIMITS
    return min(high, max(low, read_bytes // 16))


def peak_memory(jobs: Sequence[TensorJob]) -> int:
    """Bytes a merge holds at its peak above the import of mergehub: the runtime and the heap it keeps, the inputs
    read ahead (or the current job's, when larger), the job's working memory, and the previous output, still with
    the writer."""
    total = sum(job.read_bytes for job in jobs)
    read_ahead = min(read_ahead_bytes(total), total)
    peak = previous = 0
    for job in jobs:
        peak = max(peak, max(read_ahead, job.read_bytes) + _job_memory(job) + previous)
        previous = DTYPES[job.dtype].itemsize * math.prod(job.shape)
    return RUNTIME_BYTES + RETAINED_HEAP_BYTES + peak


def _job_memory(job: TensorJob) -> int:
    """Bytes one job allocates beyond its inputs: widened copies (whole or one chunk each), masks, result, output."""
    numel, count = math.prod(job.shape), len(job.inputs)
    output = DTYPES[job.dtype].itemsize * numel
    if not DTYPES[job.dtype].is_floating_point:
        return 0
    method = get_kernel(job.method)
    if method.elementwise and numel > CHUNK_ELEMENTS:
        return 4 * CHUNK_ELEMENTS * (count + 1) + output
    copies = 0 if method.widens else 4 * numel * count
    masks = numel * (count - 1) if method.random else 0  # one boolean per entry and task vector
    factors = 4 * numel if job.outputs else 0  # an extraction's SVD factors, beside its delta
    result = 0 if method.widens else 4 * numel  # a kernel that widens chunk by chunk writes the output itself
    return copies + masks + factors + result + output


def embedding_rows(source: TensorSource) -> int | None:
    """The row count of a model's input embedding (its vocabulary size as stored), or None if it has none."""
    for info in source.tensors().values():
        if tensor_group(info.name) == "pre" and "embed" in info.name and len(info.shape) == 2:
            return info.shape[0]
    return None


def _output_vocabulary(
    recipe: Recipe, sources: Mapping[ModelRef, TensorSource], files_of: Callable[[ModelRef], Mapping[str, bytes]]
) -> tuple[OutputTokenizer, VocabAlignment] | None:
    """The output tokenizer and each model's row map, when the recipe sets `tokenizer_source` or `tokenizer`.

    Raises:
        RecipeError: the tokenizer source or a `tokens:` entry names something the models lack.
        PlanError: a model has no input embedding.
    """
    settings = recipe.tokenizer
    spec = settings.source if settings else recipe.tokenizer_source
    if spec is None:
        return None
    where = "tokenizer.source" if settings else "tokenizer_source"
    refs = recipe.referenced_models()
    rows = {str(ref): embedding_rows(sources[ref]) for ref in refs}
    missing = [label for label, count in rows.items() if count is None]
    if missing:
        raise PlanError(
            f"No input embedding found in {', '.join(missing)}.",
            hint="Vocabulary merging needs each model's embedding.",
            location=where,
            line=recipe.line_of(where),
        )
    sizes = {str(ref): text_config(sources[ref].config()).get("vocab_size") or rows[str(ref)] for ref in refs}
    tokens = settings.tokens if settings else None
    base = str(recipe.base_model) if recipe.base_model else None
    try:
        output = build_output_tokenizer(
            spec, base, {str(ref): files_of(ref) for ref in refs}, list(tokens or {}), vocab_sizes=sizes
        )
        alignment = align_vocabularies(output, rows, tokens, settings.pad_to_multiple_of if settings else None)
    except MergehubError as e:
        recipe.locate(e, where)
        raise
    return output, alignment
