"""An MoE config + the models' headers and configs → a `Plan` the merge executor runs like any other.

Its jobs copy the base's attention, norms and embeddings (`passthrough`), each expert's MLP from its
own model layer by layer (`moe_expert` when the expert has noise or a residual scale), and each
layer's router from the computed gates (`router.L` of the gate source, see `mergehub.moe.gates`):
the plan records the gate mode, the prompts and the seed (`Plan.moe.gates`), and the router jobs read
what the gate pre-pass computes from them before the executor starts. Everything is checked here,
from configs and headers: the config's rules, the output architecture, every expert's layer count
and MLP shapes against the base's, the tokenizer the prompts need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mergehub.architecture import num_layers, split_layer_name, tensor_group, text_config
from mergehub.errors import PlanError, Problem, RecipeError, RecipeWarning, listing
from mergehub.moe.arch import DENSE_MLP, RESIDUAL, UNSUPPORTED, MoEArchitecture, select_architecture
from mergehub.moe.config import Expert, MoEConfig
from mergehub.moe.gates import GateSource, GateSpec, router_name
from mergehub.moe.layout import GATES, MoEExpert, MoELayout
from mergehub.plan import (
    DEFAULT_SHARD_BYTES,
    InputTensor,
    ModelEntry,
    Plan,
    TensorJob,
    input_files,
    layout_shards,
    peak_memory,
)
from mergehub.recipe import ModelRef
from mergehub.sources.base import DTYPES, TensorSource
from mergehub.vocab import tokenizer_files

__all__ = ["plan_moe"]

_DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def _dtype_code(config: MoEConfig, base_config: dict) -> str | None:
    """The output dtype, as mergekit-moe picks it: the config's `dtype`, else the base's."""
    name = config.dtype or base_config.get("torch_dtype") or base_config.get("dtype")
    return _DTYPE_CODES.get(str(name).removeprefix("torch.")) if name else None


def _architecture(config: MoEConfig, configs: Mapping[ModelRef, dict]) -> MoEArchitecture:
    """The output architecture mergekit-moe would pick, or a PlanError saying why none fits."""
    requested = config.architecture
    if requested and any(requested.lower().startswith(prefix) for prefix in UNSUPPORTED):
        what = next(v for k, v in UNSUPPORTED.items() if requested.lower().startswith(k))
        raise PlanError(
            f"architecture: {requested!r} asks for {what}, which mergehub does not build.",
            hint="Use Mixtral (Llama or Mistral experts), Qwen MoE (with one shared expert) or Qwen3 MoE.",
            location="architecture",
            line=config.line_of("architecture"),
        )
    shared = config.shared_experts or []
    types = [str(configs[ref].get("model_type")) for ref in config.referenced_models()]
    chosen, reasons = select_architecture(
        requested, types, len(shared), any(e.positive_prompts for e in shared), config.gate_mode
    )
    if chosen is None:
        asked = f" matching architecture: {requested!r}" if requested else ""
        where = "architecture" if requested else ""
        raise PlanError(
            f"No MoE architecture{asked} fits these models: " + "; ".join(reasons or ["none has that name"]) + ".",
            hint="mergehub builds Mixtral (Llama or Mistral experts), Qwen MoE (Llama, Mistral or Qwen2 experts and "
            "exactly one shared expert) and Qwen3 MoE (Qwen3 experts).",
            location=where,
            line=config.line_of(where) if where else None,
        )
    return chosen


def _mlp_name(layer: int, projection: str) -> str:
    return f"model.layers.{layer}.mlp.{projection}.weight"


def _check_experts(
    config: MoEConfig, sources: Mapping[ModelRef, TensorSource], configs: Mapping[ModelRef, dict], layers: int
) -> list[Problem]:
    """Every expert's layer count, hidden size and MLP tensors against the base's.

    Each problem is located where the config names the model.
    """
    base = sources[config.base_model].tensors()
    base_config = text_config(configs[config.base_model])
    problems = []
    missing = [_mlp_name(layer, p) for layer in range(layers) for p in DENSE_MLP if _mlp_name(layer, p) not in base]
    if missing:
        problems.append(
            Problem(
                "base_model",
                f"{config.base_model} has no {missing[0]}: its MLPs are not Llama-style "
                f"(gate_proj, up_proj, down_proj).",
                config.line_of("base_model"),
            )
        )
    experts = [("experts", i, e) for i, e in enumerate(config.experts)] + [
        ("shared_experts", i, e) for i, e in enumerate(config.shared_experts or [])
    ]
    for group, i, expert in experts:
        ref, where = expert.source_model, f"{group}[{i}].source_model"

        def problem(message: str, ref: ModelRef = ref, where: str = where) -> None:
            problems.append(Problem(where, f"{ref} {message}", config.line_of(where)))

        expert_config = text_config(configs[ref])
        if num_layers(configs[ref]) != layers:
            problem(f"has {num_layers(configs[ref])} layers; the base has {layers}.")
            continue
        if expert_config.get("hidden_size") != base_config.get("hidden_size"):
            problem(
                f"has hidden size {expert_config.get('hidden_size')}; the base has {base_config.get('hidden_size')}."
            )
            continue
        tensors = sources[ref].tensors()
        for layer in range(layers):
            for projection in DENSE_MLP:
                name = _mlp_name(layer, projection)
                if name not in tensors:
                    problem(f"has no {name}.")
                elif name in base and tensors[name].shape != base[name].shape:
                    problem(f"has {name} of shape {list(tensors[name].shape)}; the base's is {list(base[name].shape)}.")
    return problems


@dataclass
class _Jobs:
    """The jobs of an MoE plan as they are added, and the bytes read from each model."""

    dtype: str | None
    jobs: list[TensorJob]
    read: dict[str, int]

    def add(
        self,
        name: str,
        model: str,
        source_name: str,
        info_dtype: str,
        shape: tuple[int, ...],
        nbytes: int,
        method: str = "passthrough",
        params: tuple = (("scale", (None,)),),
    ) -> None:
        dtype = self.dtype if self.dtype and DTYPES[info_dtype].is_floating_point else info_dtype
        self.jobs.append(
            TensorJob(name, shape, dtype, method, (InputTensor(model, source_name),), None, params, nbytes)
        )
        if model != GATES:
            self.read[model] = self.read.get(model, 0) + nbytes


def _expert_job(
    jobs: _Jobs, name: str, model: str, source: TensorSource, source_name: str, expert: Expert, projection: str
) -> None:
    info = source.tensors()[source_name]
    residual = expert.residual_scale if projection == RESIDUAL else None
    if expert.noise_scale is None and residual is None:
        jobs.add(name, model, source_name, info.dtype, info.shape, info.nbytes)
    else:
        jobs.add(
            name,
            model,
            source_name,
            info.dtype,
            info.shape,
            info.nbytes,
            "moe_expert",
            (("noise_scale", expert.noise_scale), ("residual_scale", residual)),
        )


def plan_moe(
    config: MoEConfig,
    sources: Mapping[ModelRef, TensorSource],
    *,
    seed: int = 0,
    out_shard_bytes: int = DEFAULT_SHARD_BYTES,
    allow_all_same: bool = False,
    strict: bool = False,
) -> Plan:
    """Build and check the plan of an MoE assembly from its config and the models' headers, configs and small files.

    `sources` holds every model the config references, keyed by its reference. The router jobs read the key
    `GATES`: the executor is given the computed gates (`mergehub.moe.gates.GateSource`) under `GATES_REF`.

    Raises:
        RecipeError: the config breaks one of mergekit-moe's rules, or (with `strict`) has warnings.
        PlanError: no output architecture fits, or the experts do not fit the base (layers, sizes, MLP tensors),
            or the base has no tokenizer when the gate mode needs one.
    """
    config.check(allow_all_same=allow_all_same)
    refs = config.referenced_models()
    configs = {ref: sources[ref].config() for ref in refs}
    arch = _architecture(config, configs)
    base_ref = config.base_model
    base, base_config = sources[base_ref], text_config(configs[base_ref])
    layers = num_layers(configs[base_ref])
    hidden = base_config.get("hidden_size")
    if not isinstance(layers, int) or not isinstance(hidden, int):
        raise PlanError(
            f"{base_ref}: config.json names no num_hidden_layers or hidden_size.",
            hint="Check the base's config.json.",
            location="base_model",
            line=config.line_of("base_model"),
        )
    problems = _check_experts(config, sources, configs, layers)
    files = tokenizer_files(base)
    if config.prompt_mode and not files:
        problems.append(
            Problem(
                "gate_mode",
                f"{base_ref} (the base) has no tokenizer files, which `gate_mode: {config.gate_mode}` needs "
                "for the prompts.",
                config.line_of("gate_mode"),
            )
        )
    if problems:
        raise PlanError(
            f"The experts do not fit the base ({len(problems)} problem(s)):",
            hint="Experts must be fine-tunes of the base: the same layers and sizes.",
            problems=tuple(problems),
        )

    gated = config.gated_experts()
    gates = GateSpec(
        config.gate_mode,
        tuple(e.prompt_set() for e in gated),
        routed=len(config.experts),
        num_layers=layers,
        hidden_size=hidden,
        vocab_size=int(base_config.get("vocab_size") or 0),
        seed=seed,
    )
    gate_source = GateSource.planned(gates, DTYPES["BF16"] if gates.runs_base else DTYPES["F32"])
    jobs = _Jobs(_dtype_code(config, configs[base_ref]), [], {})
    base_key = str(base_ref)
    warnings: list[RecipeWarning] = list(config.warnings)
    base_tensors = base.tensors()
    by_layer: dict[int, list[str]] = {}
    outside: dict[str, list[str]] = {"pre": [], "post": []}
    left_out = []
    for name in sorted(base_tensors):
        parsed = split_layer_name(name)
        if parsed is not None and parsed.suffix.startswith("mlp."):
            continue  # replaced by the experts' MLPs
        if not arch.is_copied(name):
            left_out.append(name)
        elif parsed is not None:
            by_layer.setdefault(parsed.index, []).append(name)
        else:
            outside["post" if tensor_group(name) == "post" else "pre"].append(name)
    if left_out:
        warnings.append(
            RecipeWarning(
                "base_model",
                f"{len(left_out)} tensor(s) of the base have no place in {arch.name} and are left "
                f"out, as mergekit-moe leaves them: {', '.join(left_out[:5])}"
                f"{', ...' if len(left_out) > 5 else ''}.",
                config.line_of("base_model"),
            )
        )
    if strict and warnings:
        raise RecipeError(
            f"The MoE config sets {len(warnings)} thing(s) that would be ignored (strict mode):"
            + listing(tuple(warnings)),
            hint="Remove or fix them, or run without strict mode to ignore them as mergekit-moe does.",
            warnings=tuple(warnings),
        )

    def copy(name: str) -> None:
        info = base_tensors[name]
        jobs.add(name, base_key, name, info.dtype, info.shape, info.nbytes)

    for name in outside["pre"]:
        copy(name)
    shared = config.shared_experts or []
    for layer in range(layers):
        for name in by_layer.get(layer, []):
            copy(name)
        if arch.zero_biases:
            for projection in "qkv":
                bias = f"model.layers.{layer}.self_attn.{projection}_proj.bias"
                if bias not in base_tensors:
                    weight = base_tensors[f"model.layers.{layer}.self_attn.{projection}_proj.weight"]
                    rows = weight.shape[0]
                    jobs.jobs.append(
                        TensorJob(
                            bias, (rows,), jobs.dtype or weight.dtype, "zeros", (), None, (("shape", (rows,)),), 0
                        )
                    )
        router = gate_source.tensors()[router_name(layer)]
        jobs.add(arch.router_tensor(layer), GATES, router.name, router.dtype, router.shape, router.nbytes)
        if shared:
            shared_router = gate_source.tensors()[router_name(layer, shared=True)]
            jobs.add(
                arch.shared_router_tensor(layer),
                GATES,
                shared_router.name,
                shared_router.dtype,
                shared_router.shape,
                shared_router.nbytes,
            )
        for e, expert in enumerate(config.experts):
            for projection, _ in arch.projections:
                _expert_job(
                    jobs,
                    arch.expert_tensor(layer, e, projection),
                    str(expert.source_model),
                    sources[expert.source_model],
                    _mlp_name(layer, projection),
                    expert,
                    projection,
                )
        for expert in shared:
            for projection in DENSE_MLP:
                _expert_job(
                    jobs,
                    arch.shared_tensor(layer, projection),
                    str(expert.source_model),
                    sources[expert.source_model],
                    _mlp_name(layer, projection),
                    expert,
                    projection,
                )
    for name in outside["post"]:
        copy(name)

    dtype_name = next((k for k, v in _DTYPE_CODES.items() if v == jobs.dtype), None)
    experts = tuple(
        MoEExpert(
            str(e.source_model),
            tuple(e.positive_prompts or ()),
            tuple(e.negative_prompts or ()),
            e.noise_scale,
            e.residual_scale,
            shared=is_shared,
        )
        for is_shared, group in ((False, config.experts), (True, shared))
        for e in group
    )
    all_jobs = tuple(jobs.jobs)
    return Plan(
        method="moe",
        models=tuple(
            ModelEntry(str(ref), sources[ref].revision, jobs.read.get(str(ref), 0), bool(sources[ref].gated))
            for ref in refs
        ),
        jobs=all_jobs,
        shards=layout_shards([(j.name, j.dtype, j.shape) for j in all_jobs], out_shard_bytes),
        config=arch.config(
            configs[base_ref], experts=len(config.experts), experts_per_token=config.experts_per_token, dtype=dtype_name
        ),
        config_model=base_key,
        base_model=base_key,
        input_dtype=None,
        num_layers=layers,
        peak_memory_bytes=peak_memory(all_jobs),
        recipe_text=config.text,
        seed=seed,
        max_shard_bytes=out_shard_bytes,
        tokenizer_files=dict(files),
        generation_config=base.read_file("generation_config.json"),
        warnings=tuple(warnings),
        input_files=input_files(all_jobs, refs, sources),
        moe=MoELayout(arch.name, config.experts_per_token, experts, gates),
    )
