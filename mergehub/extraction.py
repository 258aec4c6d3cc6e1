"""Base + fine-tune headers → the `Plan` of a LoRA extraction (mergekit-extract-lora's choices), and its adapter config.

Each module of the fine-tune is, as mergekit-extract-lora 0.1.5 decides it:

- saved whole (`modules_to_save`): modules named by `save_modules`, the input and output embeddings unless
  `embed_lora` (always when the vocabularies differ), and modules that are not matrices (norms) unless
  `skip_undecomposable` drops them;
- extracted as LoRA factors (one `extract_lora` job writing `lora_A` and `lora_B`, or `lora_embedding_A/B` for an
  input embedding): the other matrices, when `include` regexes (if any) match the module name and no `exclude`
  regex does;
- left out: modules that the regexes leave out.

The rank of each module is decided by its singular values when the job runs (at most `rank`, fewer with
`rank_energy` or `sv_epsilon`), so the plan gives each factor its largest shape and the adapter file is written
with a header of the actual shapes (`writer.BoundedWriter`). Planning reads configs and headers only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from mergehub import safe_yaml
from mergehub.architecture import is_language_model_tensor, tensor_group
from mergehub.errors import PlanError, RecipeError, RecipeWarning, excerpt
from mergehub.methods import get_kernel
from mergehub.plan import (
    EXTRACT_METHOD,
    EXTRACTION_FILE,
    InputTensor,
    JobOutput,
    Plan,
    ShardLayout,
    TensorJob,
    TensorSlot,
    input_files,
    model_entry,
    peak_memory,
)
from mergehub.recipe import ModelRef
from mergehub.sources.base import ADAPTER_WEIGHTS, DTYPES, TensorInfo, TensorSource

__all__ = [
    "ExtractOptions",
    "ExtractionSpec",
    "EXTRACT_METHOD",
    "SPEC_FILENAME",
    "SPEC_KEY",
    "plan_extraction",
    "adapter_config",
    "module_ranks",
    "is_extraction",
    "parse_extraction",
]

_PREFIX = "base_model.model."
_COPY = "passthrough"
_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_MAX_LISTED = 20


@dataclass(frozen=True)
class ExtractOptions:
    """How to extract: the options of mergekit-extract-lora 0.1.5, plus `rank_energy` and the SVD algorithm.

    `rank` is the largest rank of a module (mergekit's `--max-rank`); `rank_energy` keeps, per module, the smallest
    rank whose singular values hold that fraction of the delta's squared Frobenius norm; `sv_epsilon` drops
    singular values at or below it. `save_modules` are module names (or their last component) saved whole;
    `include` / `exclude` are regexes searched in module names.
    """

    rank: int
    rank_energy: float | None = None
    sv_epsilon: float = 0.0
    distribute_scale: bool = True
    embed_lora: bool = False
    save_modules: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_undecomposable: bool = False
    svd: Literal["exact", "randomized"] = "exact"

    def check(self) -> None:
        """Raises RecipeError naming the first option out of range (rank, energy, epsilon, a regex, the SVD)."""
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise RecipeError(
                f"rank {excerpt(self.rank)} is not a positive whole number.", hint="Give a rank such as 32."
            )
        if self.rank_energy is not None and (
            isinstance(self.rank_energy, bool)
            or not isinstance(self.rank_energy, (int, float))
            or not 0 < self.rank_energy <= 1
        ):
            raise RecipeError(
                f"rank_energy {excerpt(self.rank_energy)} is not in (0, 1].", hint="Give a fraction such as 0.9."
            )
        for flag in ("distribute_scale", "embed_lora", "skip_undecomposable"):
            if not isinstance(getattr(self, flag), bool):
                raise RecipeError(
                    f"{flag} {excerpt(getattr(self, flag))} is not true or false.",
                    hint=f"Write `{flag}: true` or false.",
                )
        if isinstance(self.sv_epsilon, bool) or not isinstance(self.sv_epsilon, (int, float)):
            raise RecipeError(
                f"sv_epsilon {excerpt(self.sv_epsilon)} is not a number.",
                hint="Give 0 (keep all) or a positive threshold.",
            )
        if self.sv_epsilon < 0:
            raise RecipeError(
                f"sv_epsilon {excerpt(self.sv_epsilon)} is negative.", hint="Give 0 (keep all) or a positive threshold."
            )
        if self.svd not in ("exact", "randomized"):
            raise RecipeError(
                f"svd {excerpt(self.svd)} is not `exact` or `randomized`.", hint="Use exact (mergekit's) or randomized."
            )
        for pattern in (*self.include, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as e:
                raise RecipeError(
                    f"{excerpt(pattern)} is not a regular expression: {e}.", hint="Check the include/exclude regexes."
                ) from e

    def included(self, module: str) -> bool:
        """Whether the regexes let `module` be extracted (mergekit: an include matches, if any; no exclude matches)."""
        if self.include and not any(re.search(p, module) for p in self.include):
            return False
        return not self.excluded(module)

    def excluded(self, module: str) -> bool:
        """Whether an exclude regex matches `module`."""
        return any(re.search(p, module) for p in self.exclude)


def _embedding(name: str, info: TensorInfo) -> Literal["input", "output"] | None:
    """Whether a weight is the language model's input embedding (an nn.Embedding) or its output head."""
    if len(info.shape) != 2 or not is_language_model_tensor(name):
        return None
    group = tensor_group(name)
    if group == "pre":
        return "input"
    return "output" if group == "post" else None


def _modules(tensors: Mapping[str, TensorInfo]) -> dict[str, dict[str, TensorInfo]]:
    modules: dict[str, dict[str, TensorInfo]] = {}
    for name, info in tensors.items():
        module, _, param = name.rpartition(".")
        modules.setdefault(module, {})[param] = info
    return modules


@dataclass
class _Extraction:
    """Mutable state while planning one extraction; discarded afterwards."""

    base: Mapping[str, TensorInfo]
    model: Mapping[str, TensorInfo]
    keys: tuple[str, str]
    """The plan keys of the base and of the fine-tune."""
    options: ExtractOptions
    to_save: list[str]
    jobs: list[TensorJob]
    problems: list[str]
    warnings: list[RecipeWarning]

    def warn(self, message: str) -> None:
        self.warnings.append(RecipeWarning("", message))

    def copy(self, name: str) -> None:
        """A job writing the fine-tune's tensor whole, under its adapter name."""
        info = self.model[name]
        spec = get_kernel(_COPY)
        self.jobs.append(
            TensorJob(
                name=_PREFIX + name,
                shape=info.shape,
                dtype=info.dtype,
                method=_COPY,
                inputs=(InputTensor(self.keys[1], name),),
                base_index=None,
                params=tuple((p.argument, p.default_for(1, None)) for p in spec.params),
                read_bytes=info.nbytes,
            )
        )

    def extract(self, module: str, weight: TensorInfo, transpose: bool) -> None:
        """A job writing the factors of one module's delta."""
        name = f"{module}.weight"
        base = self.base.get(name)
        if base is None or base.shape != weight.shape:
            found = "has no such tensor" if base is None else f"has {list(base.shape)}"
            self.problems.append(f"{name}: the fine-tune has {list(weight.shape)}, the base {found}.")
            return
        rows, cols = weight.shape[::-1] if transpose else weight.shape
        bound = min(self.options.rank, rows, cols)
        a, b = (
            f"{_PREFIX}{module}.lora_embedding_{x}" if transpose else f"{_PREFIX}{module}.lora_{x}.weight" for x in "AB"
        )
        dtype = weight.dtype
        params = (
            ("rank", self.options.rank),
            ("rank_energy", self.options.rank_energy),
            ("sv_epsilon", self.options.sv_epsilon),
            ("distribute_scale", self.options.distribute_scale),
            ("transpose", transpose),
            ("svd", self.options.svd),
            ("dtype", _NAMES[dtype]),
        )
        self.jobs.append(
            TensorJob(
                name=name,
                shape=weight.shape,
                dtype=dtype,
                method=EXTRACT_METHOD,
                inputs=(InputTensor(self.keys[0], name), InputTensor(self.keys[1], name)),
                base_index=0,
                params=params,
                read_bytes=base.nbytes + weight.nbytes,
                outputs=(JobOutput("A", a, (bound, cols), dtype), JobOutput("B", b, (rows, bound), dtype)),
            )
        )

    def bias_delta(self, module: str) -> None:
        name = f"{module}.bias"
        info, base = self.model[name], self.base.get(name)
        if base is None or base.shape != info.shape:
            self.problems.append(f"{name}: the base has {'no such tensor' if base is None else list(base.shape)}.")
            return
        self.jobs.append(
            TensorJob(
                name=name,
                shape=info.shape,
                dtype=info.dtype,
                method="difference",
                inputs=(InputTensor(self.keys[0], name), InputTensor(self.keys[1], name)),
                base_index=0,
                params=(),
                read_bytes=base.nbytes + info.nbytes,
                outputs=(JobOutput("delta", f"{_PREFIX}{module}.lora_B.bias", info.shape, info.dtype),),
            )
        )


def plan_extraction(
    base_ref: ModelRef,
    model_ref: ModelRef,
    base: TensorSource,
    model: TensorSource,
    options: ExtractOptions,
    *,
    spec_text: str | None = None,
) -> Plan:
    """Plan the extraction of a LoRA adapter of `model` (the fine-tune) relative to `base`, from headers and configs.

    The plan's `config` is the adapter_config.json to write, with `r` the largest rank: `adapter_config` fills in the
    ranks the run decides. Its `recipe_text` is the extraction as a file (`spec_text`, else written from the options).

    Raises:
        RecipeError: an option is out of range, or the base is a `model+adapter` reference.
        PlanError: the models do not fit together (architectures, tensors missing from the base, shapes).
    """
    options.check()
    if base_ref.adapter is not None:
        raise RecipeError(
            f"The base {base_ref} has a LoRA adapter; an extracted adapter must apply to a model on the Hub or "
            "on disk.",
            hint="Give the base model alone (the fine-tune may be a `model+adapter` reference).",
        )
    base_config, model_config = base.config(), model.config()
    kinds = [tuple(c.get("architectures") or [c.get("model_type")]) for c in (base_config, model_config)]
    keys = (str(base_ref), str(model_ref))
    state = _Extraction(base.tensors(), model.tensors(), keys, options, list(options.save_modules), [], [], [])
    if kinds[0] != kinds[1]:
        state.problems.append(
            f"The models have different architectures ({'/'.join(map(str, kinds[0]))} and "
            f"{'/'.join(map(str, kinds[1]))})."
        )
    embed_lora = options.embed_lora
    vocab = [
        next((i.shape for n, i in t.items() if _embedding(n, i) == "input"), None) for t in (state.base, state.model)
    ]
    if embed_lora and vocab[0] != vocab[1]:
        state.warn(
            f"The vocabularies differ (embeddings {vocab[0]} and {vocab[1]}): embeddings are saved whole, not as LoRA."
        )
        embed_lora = False
    lora_modules: list[str] = []
    biased: list[str] = []
    undecomposable: list[str] = []
    ignored: list[str] = []
    for module, params in sorted(_modules(state.model).items()):
        weight = params.get("weight")
        if weight is None:
            ignored += [f"{module}.{p}" for p in params]
            continue
        ignored += [f"{module}.{p}" for p in params if p not in ("weight", "bias")]
        key = module.rpartition(".")[2]
        embedding = _embedding(f"{module}.weight", weight)
        if embedding and not embed_lora and not options.excluded(module) and key not in state.to_save:
            state.to_save.append(key)
        if module in state.to_save or key in state.to_save:
            for param in ("weight", "bias"):
                if param in params:
                    state.copy(f"{module}.{param}")
        elif options.included(module):
            if len(weight.shape) == 2:
                state.extract(module, weight, transpose=embedding == "input")
                lora_modules.append(module)
                if "bias" in params:
                    biased.append(module)
            else:
                undecomposable += [key] * (key not in undecomposable)
                if not options.skip_undecomposable:
                    state.to_save.append(key)
                    for param in ("weight", "bias"):
                        if param in params:
                            state.copy(f"{module}.{param}")
    if state.problems:
        shown = state.problems[:_MAX_LISTED] + (
            [f"... and {len(state.problems) - _MAX_LISTED} more"] if len(state.problems) > _MAX_LISTED else []
        )
        raise PlanError(
            f"The fine-tune does not fit the base ({len(state.problems)} problem(s)):\n  " + "\n  ".join(shown),
            hint="Extract from a fine-tune of this base: same architecture, same tensor names and shapes.",
            problems=tuple(state.problems),
        )
    if not lora_modules:
        raise PlanError("No module is left to extract as LoRA.", hint="Check --include/--exclude and --save-module.")
    lora_bias = bool(biased) and len(biased) == len(lora_modules)
    if lora_bias:
        for module in biased:
            state.bias_delta(module)
    elif biased:
        state.warn(
            f"The biases of {len(biased)} LoRA module(s) ({', '.join(biased[:3])}{'...' if len(biased) > 3 else ''}) "
            "are not in the adapter: peft's lora_bias needs a bias on every LoRA module. Save those modules whole to "
            "keep them."
        )
    if undecomposable:
        action = "left out (skip_undecomposable)" if options.skip_undecomposable else "saved whole"
        state.warn(f"Modules that are not matrices are {action}: {', '.join(undecomposable)}.")
    if ignored:
        state.warn(
            f"{len(ignored)} tensor(s) that are no module's weight or bias are not in the adapter: "
            f"{', '.join(ignored[:5])}"
            f"{'...' if len(ignored) > 5 else ''}."
        )
    jobs = tuple(state.jobs)
    refs, sources = [base_ref, model_ref], {base_ref: base, model_ref: model}
    read = [sum(j.read_bytes for j in jobs if any(i.model == key for i in j.inputs)) for key in keys]
    slots, offset = [], 0
    for job in jobs:
        for out in job.outputs or (JobOutput("", job.name, job.shape, job.dtype),):
            size = DTYPES[out.dtype].itemsize
            for dim in out.shape:
                size *= dim
            slots.append(TensorSlot(out.name, out.dtype, out.shape, offset, offset + size))
            offset += size
    bound = max(job.outputs[0].shape[0] for job in jobs if job.method == EXTRACT_METHOD)
    return Plan(
        method=EXTRACT_METHOD,
        models=tuple(model_entry(ref, sources[ref], read[k]) for k, ref in enumerate(refs)),
        jobs=jobs,
        shards=(ShardLayout(ADAPTER_WEIGHTS, tuple(slots)),),
        config=_config_template(base_ref, base, lora_modules, state.model.keys(), state.to_save, lora_bias, bound),
        config_model=keys[1],
        base_model=keys[0],
        input_dtype=None,
        num_layers=None,
        peak_memory_bytes=peak_memory(jobs),
        recipe_text=spec_text or ExtractionSpec(base_ref, model_ref, options).to_yaml(),
        max_shard_bytes=offset,
        warnings=tuple(state.warnings),
        input_files=input_files(jobs, refs, sources),
    )


def _target_modules(modules: list[str], names: Any) -> list[str]:
    """peft's target_modules for exactly these modules: their last name components when those select no other
    module of the model, else the full module names."""
    all_modules = {name.rpartition(".")[0] for name in names}
    keys = sorted({m.rpartition(".")[2] for m in modules})
    chosen = set(modules)
    if all(m in chosen for m in all_modules if m.rpartition(".")[2] in keys):
        return keys
    return sorted(chosen)


def _config_template(
    base_ref: ModelRef,
    base: TensorSource,
    modules: list[str],
    names: Any,
    to_save: list[str],
    lora_bias: bool,
    rank: int,
) -> dict:
    return {
        "base_model_name_or_path": base_ref.path,
        "revision": base.revision,
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_modules": _target_modules(modules, names),
        "modules_to_save": list(to_save),
        "use_rslora": False,
        "fan_in_fan_out": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "lora_bias": lora_bias,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def module_ranks(plan: Plan, measures: Mapping[str, Mapping[str, float]]) -> dict[str, int]:
    """The rank each module was given by the run, by module name."""
    return {
        job.name.removesuffix(".weight"): int(measures[job.name]["rank"])
        for job in plan.jobs
        if job.method == EXTRACT_METHOD
    }


def adapter_config(plan: Plan, measures: Mapping[str, Mapping[str, float]]) -> dict:
    """The adapter_config.json of a finished extraction: `r` the largest rank given, the others in `rank_pattern`,
    with `alpha` equal to the rank everywhere (so that peft's scaling is 1: the factors carry the delta)."""
    ranks = module_ranks(plan, measures)
    top = max(ranks.values())
    others = {module: rank for module, rank in ranks.items() if rank != top}
    return {**plan.config, "r": top, "lora_alpha": top, "rank_pattern": others, "alpha_pattern": dict(others)}


SPEC_KEY = "extract_lora"
SPEC_FILENAME = EXTRACTION_FILE
"""The extraction as a file, written beside the adapter: `extract_lora: {base, model, rank, ...}`."""
_OPTION_KEYS = tuple(ExtractOptions.__dataclass_fields__)


@dataclass(frozen=True)
class ExtractionSpec:
    """An extraction as a file names it: the base, the fine-tune, and the options (the Action runs such files)."""

    base: ModelRef
    model: ModelRef
    options: ExtractOptions

    def to_yaml(self) -> str:
        """The file form, with only the options that differ from their defaults."""
        defaults = ExtractOptions(rank=self.options.rank)
        block: dict[str, Any] = {"base": str(self.base), "model": str(self.model)}
        for key in _OPTION_KEYS:
            value = getattr(self.options, key)
            if key == "rank" or value != getattr(defaults, key):
                block[key] = list(value) if isinstance(value, tuple) else value
        return yaml.safe_dump({SPEC_KEY: block}, sort_keys=False)

    def command(self, out: str) -> str:
        """The `mergehub extract-lora` command line that runs this extraction into `out`."""
        o, defaults = self.options, ExtractOptions(rank=self.options.rank)
        parts = ["mergehub extract-lora", f"--base {self.base}", f"--model {self.model}", out, f"--rank {o.rank}"]
        parts += [f"--rank-energy {o.rank_energy}"] * (o.rank_energy is not None) + [f"--sv-epsilon {o.sv_epsilon}"] * (
            o.sv_epsilon > 0
        )
        parts += ["--no-distribute-scale"] * (not o.distribute_scale) + ["--embed-lora"] * o.embed_lora
        parts += [f"--save-module {m}" for m in o.save_modules] + [f"--include-regex '{r}'" for r in o.include]
        parts += [f"--exclude-regex '{r}'" for r in o.exclude] + ["--skip-undecomposable"] * o.skip_undecomposable
        parts += [f"--svd {o.svd}"] * (o.svd != defaults.svd)
        return " ".join(parts)


def is_extraction(data: object) -> bool:
    """Whether parsed YAML is an extraction file (a top-level `extract_lora:` mapping) rather than a merge recipe."""
    return isinstance(data, dict) and SPEC_KEY in data


def parse_extraction(text: str) -> ExtractionSpec:
    """Read an extraction file: `extract_lora:` with `base`, `model`, `rank` and any option of `ExtractOptions`.

    Raises:
        RecipeError: not YAML, not that shape, an unknown key (with its line), or an option out of range.
    """
    try:
        data = safe_yaml.load(text, what="The extraction file")
    except yaml.YAMLError as e:
        raise RecipeError(f"The extraction file is not valid YAML: {e}", hint="Check indentation and quoting.") from e
    block = data.get(SPEC_KEY) if isinstance(data, dict) else None
    if not isinstance(block, dict):
        raise RecipeError(
            f"An extraction file is a mapping `{SPEC_KEY}:` with base, model and rank.",
            hint=f"Write `{SPEC_KEY}: {{base: org/base, model: org/fine-tune, rank: 32}}`.",
            location=SPEC_KEY,
        )
    lines = _lines(text)
    unknown = [k for k in block if k not in ("base", "model", *_OPTION_KEYS)]
    if unknown or "base" not in block or "model" not in block or "rank" not in block:
        key = unknown[0] if unknown else next(k for k in ("base", "model", "rank") if k not in block)
        problem = f"`{key}` is not an option of {SPEC_KEY}" if unknown else f"`{key}` is missing"
        raise RecipeError(
            f"{SPEC_KEY}.{key}: {problem}.",
            hint=f"Keys: base, model, {', '.join(_OPTION_KEYS)}.",
            location=f"{SPEC_KEY}.{key}",
            line=lines.get(key, lines.get(SPEC_KEY)),
        )
    values: dict[str, Any] = {}
    for key in _OPTION_KEYS:
        if key in block:
            value = block[key]
            kind = ExtractOptions.__dataclass_fields__[key].type
            if "tuple" in str(kind):
                value = tuple(str(v) for v in (value if isinstance(value, list) else [value]))
            elif key in ("rank_energy", "sv_epsilon") and isinstance(value, (str, int)) and not isinstance(value, bool):
                value = _float(value, key, lines)
            values[key] = value
    options = ExtractOptions(**values)
    try:
        options.check()
        base, model = ModelRef.parse(str(block["base"])), ModelRef.parse(str(block["model"]))
    except RecipeError as e:
        raise RecipeError(f"{SPEC_KEY}: {e.message}", hint=e.hint, location=SPEC_KEY, line=lines.get(SPEC_KEY)) from e
    return ExtractionSpec(base, model, options)


def _float(value: Any, key: str, lines: Mapping[str, int]) -> float:
    try:
        return float(value)
    except ValueError:
        raise RecipeError(
            f"{SPEC_KEY}.{key}: {excerpt(value)} is not a number.",
            hint=f"Write `{key}` as a number.",
            location=f"{SPEC_KEY}.{key}",
            line=lines.get(key),
        ) from None


def _lines(text: str) -> dict[str, int]:
    """The line of `extract_lora:` and of each of its keys."""
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"^(\s*)([A-Za-z_]+)\s*:", line)
        if match:
            lines.setdefault(match[2], number)
    return lines
