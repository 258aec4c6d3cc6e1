"""The public surface of mergehub: load a recipe, open its models, plan a merge, run it, publish it.

The pipeline, each step in its module: `recipe` (YAML → `Recipe`) → `sources` (`open_sources`:
headers, configs, small files) → `plan` (`plan_merge`: the whole merge as a `Plan`) → `executor`
(tensor by tensor, with `methods`) → `writer` (safetensors shards; GGUF files through `gguf`) →
`publish` (card, lineage, push). This module only strings them together.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from huggingface_hub import ModelCard

from mergehub import safe_yaml
from mergehub.errors import MergehubError, PlanError, PublishError, RecipeError
from mergehub.executor import ExecutionStats, Progress, execute, resolve_device
from mergehub.extraction import (
    SPEC_FILENAME,
    ExtractionSpec,
    ExtractOptions,
    adapter_config,
    is_extraction,
    module_ranks,
    parse_extraction,
)
from mergehub.extraction import plan_extraction as _plan_extraction
from mergehub.moe.config import MoEConfig, is_moe_text, parse_moe_config
from mergehub.moe.gates import GateSource, PromptStateCache, compute_gates, default_cache_dir
from mergehub.moe.layout import GATES_REF, MOE_RECIPE_FILE
from mergehub.moe.plan import plan_moe as _plan_moe
from mergehub.output import create_staging, move_into_place, resolve_target
from mergehub.plan import DEFAULT_SHARD_BYTES, Plan, StageSummary, embedding_rows
from mergehub.plan import plan_merge as _plan_merge
from mergehub.publish.card import adapter_card, merged_model_files, parent_card, plan_card, render_adapter_card
from mergehub.publish.lineage import LINEAGE_DEPTH, LineageGraph, hub_readers, merge_lineage, walk_lineage
from mergehub.publish.push import (
    PushResult,
    ShardUploader,
    commit_merge,
    delete_created_repo,
    full_repo_id,
    prepare_repo,
    push_card,
    staging_directory,
)
from mergehub.recipe import RECIPE_FILE, ModelRef, Recipe, is_hub_id, load_recipe, parse_recipe
from mergehub.sources import INDEX_NAME, LocalSource, Sources, TensorSource, open_source
from mergehub.sources import open_sources as _open_sources
from mergehub.sources.adapter import AdapterSource
from mergehub.sources.base import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from mergehub.stages import MultiStage, PlannedSource, in_stage, is_multi_stage, parse_stages
from mergehub.units import format_size
from mergehub.writer import (
    BoundedWriter,
    FanOutWriter,
    ShardedWriter,
    ShardResult,
    ShardSink,
    StateDictWriter,
    TensorSink,
    writing,
)

if TYPE_CHECKING:
    from mergehub.evaluation import EvalReport
    from mergehub.gguf.output import GGUFResult

logger = logging.getLogger(__name__)

__all__ = [
    "Plan",
    "MergeResult",
    "PushResult",
    "load_recipe",
    "parse_recipe",
    "parse_document",
    "open_sources",
    "plan_merge",
    "plan_merges",
    "plan_stages",
    "is_moe_config",
    "is_multi_stage_recipe",
    "run_merge",
    "MemoryMerge",
    "merge_in_memory",
    "push_merge",
    "open_model",
    "build_card",
    "evaluate",
    "score",
    "evaluate_merge",
    "card_with_scores",
    "push_card",
    "lineage",
    "convert_gguf",
    "push_gguf_files",
    "hub_repo_id",
    "gguf_types",
    "ExtractOptions",
    "ExtractionResult",
    "ExtractionSpec",
    "is_extraction",
    "parse_extraction",
    "plan_extraction",
    "extract_lora",
    "push_extraction",
]

RecipeLike = Recipe | MoEConfig | MultiStage | str | os.PathLike
"""A merge recipe, a mergekit-moe config or a multi-stage recipe: parsed, or as a file."""


@dataclass(frozen=True)
class MergeResult:
    """A finished merge: where it is, what was planned, and what it took."""

    out_dir: Path
    plan: Plan
    stats: ExecutionStats
    shards: tuple[ShardResult, ...]
    files: tuple[str, ...]
    gguf: GGUFResult | None = None
    stages_pushed: tuple[tuple[str, PushResult], ...] = ()
    """For a multi-stage recipe: the intermediate stages pushed to the Hub (`push_stages`), by name."""

    @property
    def seed(self) -> int:
        """The seed the merge used (`plan.seed`)."""
        return self.plan.seed

    def figures(self) -> str:
        """What the merge took, in one line: tensors, time, bytes read and written, rate, peak memory."""
        s = self.stats
        rate = (s.bytes_read + s.bytes_written) / max(s.seconds, 1e-9)
        return (
            f"Merged {len(self.plan.jobs)} tensors in {s.seconds:.1f} s: read {format_size(s.bytes_read)}, "
            f"wrote {format_size(s.bytes_written)} ({format_size(rate)}/s), peak RSS {format_size(s.peak_rss_bytes)}"
        )

    def summary(self) -> str:
        """The figures and the output directory, then each shard's sha256, any warning (NaN or Inf found), and the
        GGUF files."""
        lines = [f"{self.figures()} -> {self.out_dir}"]
        lines += [f"  sha256 {shard.sha256}  {shard.filename}" for shard in self.shards]
        lines += [f"Warning: {w}" for w in self.stats.warnings()]
        if self.gguf is not None:
            lines.append(self.gguf.summary())
        return "\n".join(lines)


def _recipe(recipe: RecipeLike) -> Recipe | MoEConfig:
    """A recipe or MoE config object, or the file read (its own text kept, so comments survive in the output)."""
    parsed = _document(recipe)
    if isinstance(parsed, MultiStage):
        raise RecipeError(
            "This is a multi-stage recipe (several YAML documents); its stages cannot be opened as one merge.",
            hint="Run it with `mergehub merge` (run_merge), or plan it with plan_stages.",
            line=1,
        )
    return parsed


def _document(recipe: RecipeLike) -> Recipe | MoEConfig | MultiStage:
    """A merge recipe, a mergekit-moe config (`experts:` without `merge_method:`) or a multi-stage recipe."""
    if isinstance(recipe, (Recipe, MoEConfig, MultiStage)):
        return recipe
    return parse_document(safe_yaml.read_text(recipe))


def parse_document(text: str) -> Recipe | MoEConfig | MultiStage:
    """A recipe file's text parsed as what it holds: a multi-stage recipe (several YAML documents), a mergekit-moe
    config (`experts:` without `merge_method:`), or a merge recipe.

    Raises:
        RecipeError: the text is not valid YAML, or not a valid recipe or config (with its line).
    """
    if is_multi_stage(text):
        return parse_stages(text)
    return parse_moe_config(text) if is_moe_text(text) else parse_recipe(text)


def is_moe_config(path: str | os.PathLike) -> bool:
    """Whether a YAML file is a mergekit-moe config (`experts:` and no `merge_method:`) rather than a merge recipe.

    Raises:
        RecipeError: the file cannot be read, or is too large.
    """
    return is_moe_text(safe_yaml.read_text(path))


def is_multi_stage_recipe(path: str | os.PathLike) -> bool:
    """Whether a YAML file holds several documents: a multi-stage recipe.

    Raises:
        RecipeError: the file cannot be read, is too large, or uses aliases.
    """
    return is_multi_stage(safe_yaml.read_text(path))


def open_model(ref: str, *, token: str | bool | None = None) -> TensorSource:
    """One model (a directory or `org/name[@revision]`) as a tensor source: config, headers, files; no weights read."""
    return open_source(ModelRef.parse(ref), token=token)


def open_sources(
    recipe: RecipeLike | Plan, *, token: str | bool | None = None, cache_dir: str | os.PathLike | None = None
) -> Sources:
    """Open every model a recipe references (base first) or a plan reads, once: `with open_sources(recipe) as sources:`.

    The result maps each `ModelRef` to its source and closes them all on exit. A recipe's Hub references
    resolve to their current commit; a plan's models open at the commits the plan pinned.

    Raises:
        ModelReferenceError, SourceError: a model cannot be found or read (located in the recipe).
    """
    if isinstance(recipe, Plan):
        return _open_sources({ModelRef.parse(m.ref): m.pinned for m in recipe.models}, token=token, cache_dir=cache_dir)
    return _open_sources(_recipe(recipe), token=token, cache_dir=cache_dir)


def plan_merge(
    recipe: RecipeLike,
    sources: Mapping[ModelRef, TensorSource] | None = None,
    *,
    out_shard_bytes: int = DEFAULT_SHARD_BYTES,
    seed: int = 0,
    token: str | bool | None = None,
    strict: bool = False,
    allow_all_same: bool = False,
) -> Plan:
    """Plan a merge or an MoE assembly from configs, headers and small files only: the `--dry-run`. `strict`: a warning
    is an error; `allow_all_same`: an MoE's experts may all be one model.

    Without `sources`, the recipe's models are opened (and closed again) here. A multi-stage recipe's plan is its
    final stage's, every stage planned (see `plan_stages`).
    """
    parsed = _document(recipe)
    if isinstance(parsed, MultiStage):
        return _stage_plans(parsed, out_shard_bytes=out_shard_bytes, seed=seed, token=token, strict=strict)[-1][1]
    with ExitStack() as stack:
        if sources is None:
            sources = stack.enter_context(_open_sources(parsed, token=token))
        if isinstance(parsed, MoEConfig):
            return _plan_moe(
                parsed,
                sources,
                seed=seed,
                out_shard_bytes=out_shard_bytes,
                allow_all_same=allow_all_same,
                strict=strict,
            )
        return _plan_merge(
            parsed,
            sources,
            out_shard_bytes=out_shard_bytes,
            seed=seed,
            strict=strict,
        )


def plan_stages(
    recipe: str | os.PathLike,
    *,
    out_shard_bytes: int = DEFAULT_SHARD_BYTES,
    seed: int = 0,
    token: str | bool | None = None,
    strict: bool = False,
    push_stages: Mapping[str, str] | None = None,
) -> list[tuple[str | None, Plan]]:
    """Plan every stage of a multi-stage recipe from headers alone, in running order (the final last): the `--dry-run`.

    A later stage is planned against the earlier stages' plans (their tensors, config and files), so no stage
    needs to run for any to be checked. The final stage's plan records every stage (`Plan.stages`).
    `push_stages` (stage name → repo, as `run_merge` takes them) are checked against the stages too.

    Raises:
        MergehubError: any stage would fail; the error names the stage, and its line in the file.
    """
    stages = parse_stages(safe_yaml.read_text(recipe))
    _stage_pushes(stages, push_stages or {}, private=False)
    return _stage_plans(
        stages,
        out_shard_bytes=out_shard_bytes,
        seed=seed,
        token=token,
        strict=strict,
    )


def _stage_plans(stages: MultiStage, **settings: Any) -> list[tuple[str | None, Plan]]:
    with ExitStack() as stack:
        plans = _plan_stages(stages, {}, stack, **settings)
    return [(stage.name, plan) for stage, plan in zip(stages.stages, plans)]


def _stage_sources(
    recipe: Recipe,
    opened: dict[ModelRef, TensorSource],
    outputs: Mapping[str, TensorSource],
    stack: ExitStack,
    *,
    token: str | bool | None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[ModelRef, TensorSource]:
    """A stage's sources: earlier stages' outputs by name, other models opened once for the whole recipe."""
    sources = {}
    for ref in recipe.referenced_models():
        if ref.path in outputs:
            sources[ref] = outputs[ref.path]
            continue
        if ref not in opened:
            opened[ref] = stack.enter_context(_open_sources([ref], token=token, cache_dir=cache_dir))[ref]
        sources[ref] = opened[ref]
    return sources


def _plan_stages(
    stages: MultiStage,
    opened: dict[ModelRef, TensorSource],
    stack: ExitStack,
    *,
    out_shard_bytes: int,
    seed: int,
    token: str | bool | None,
    strict: bool,
    cache_dir: str | os.PathLike | None = None,
) -> list[Plan]:
    """Every stage planned from headers, in order, each against the earlier stages' planned outputs; the final plan
    carries the whole recipe and every stage."""
    planned: dict[str, TensorSource] = {}
    plans: list[Plan] = []
    for stage in stages.stages:
        try:
            sources = _stage_sources(stage.recipe, opened, planned, stack, token=token, cache_dir=cache_dir)
            plan = _plan_merge(
                stage.recipe,
                sources,
                out_shard_bytes=out_shard_bytes,
                seed=seed,
                strict=strict,
            )
        except MergehubError as e:
            raise in_stage(e, stage.name, stage.first_line) from e
        plans.append(plan)
        if stage.name:
            planned[stage.name] = PlannedSource(stage.name, plan)
    summaries = tuple(StageSummary(stage.name, plan.method, plan.models) for stage, plan in zip(stages.stages, plans))
    plans[-1] = dataclasses.replace(
        plans[-1], recipe_text=stages.text, stages=summaries, warnings=(*stages.warnings, *plans[-1].warnings)
    )
    return plans


def plan_merges(
    recipes: Sequence[Recipe],
    *,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> list[Plan]:
    """Plan several recipes (the variants of an experiment), opening each model they reference once.

    Raises:
        MergehubError: the first recipe that cannot be planned; its problem says which model or setting.
    """
    refs = list(dict.fromkeys(ref for recipe in recipes for ref in recipe.referenced_models()))
    with _open_sources(refs, token=token, cache_dir=cache_dir) as sources:
        return [plan_merge(recipe, sources, seed=seed) for recipe in recipes]


@dataclass(frozen=True)
class MemoryMerge:
    """A merge held in memory: the output tensors by name, and the small files a model directory would hold."""

    plan: Plan
    tensors: dict[str, Any]
    files: dict[str, bytes]
    stats: ExecutionStats


def merge_in_memory(
    recipe: RecipeLike | Plan,
    *,
    device: str = "cpu",
    seed: int | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> MemoryMerge:
    """Plan (unless given a `Plan`), then merge into a state dict in memory; no shard is written.

    It needs the output's bytes (`plan.write_bytes`) in memory besides the merge's own working memory
    (`plan.peak_memory_bytes`). `files` holds config.json, the tokenizer files and the recipe, as `run_merge` writes
    them.

    Raises:
        MergehubError: any problem with the recipe, the models or the merge.
    """
    with open_sources(recipe, token=token, cache_dir=cache_dir) as sources:
        plan = _planned(recipe, sources, seed=seed, out_shard_bytes=None, strict=False)
        writer = StateDictWriter(plan.shards)
        stats = execute(plan, sources, writer, device=resolve_device(device))
    return MemoryMerge(plan, writer.state_dict(), plan.output_files(), stats)


def _planned(
    recipe: RecipeLike | Plan,
    sources: Mapping[ModelRef, TensorSource],
    *,
    seed: int | None,
    out_shard_bytes: int | None,
    strict: bool,
    allow_all_same: bool = False,
) -> Plan:
    """The plan to run: `recipe` itself when it is one (whose seed and shard size cannot be changed), else planned
    now."""
    if not isinstance(recipe, Plan):
        return plan_merge(
            recipe,
            sources,
            out_shard_bytes=out_shard_bytes or DEFAULT_SHARD_BYTES,
            seed=seed or 0,
            strict=strict,
            allow_all_same=allow_all_same,
        )
    changed = [
        f"{name} {given} (the plan has {planned})"
        for name, given, planned in (
            ("seed", seed, recipe.seed),
            ("out_shard_bytes", out_shard_bytes, recipe.max_shard_bytes),
        )
        if given is not None and given != planned
    ]
    if changed:
        raise PlanError(
            f"A plan fixes its seed and shard size; this run asks for {', '.join(changed)}.",
            hint="Plan the recipe again with these settings, or leave them out.",
        )
    return recipe


def _readmes(sources: Mapping[ModelRef, TensorSource]) -> dict[str, bytes | None]:
    """Each parent's README.md by plan key, and each LoRA adapter's by its reference (`plan_card` reads both)."""
    readmes = {str(ref): source.read_file("README.md") for ref, source in sources.items()}
    for ref, source in sources.items():
        if ref.adapter is not None and isinstance(source, AdapterSource):
            readmes[str(ref.adapter)] = source.adapter.read_file("README.md")
    return readmes


def _hub_parents(plan: Plan) -> list[str]:
    """The Hub repos a merge comes from: each model, and each LoRA adapter merged into one."""
    repos = [m.path for m in plan.models if m.revision] + [
        m.adapter.path for m in plan.models if m.adapter and m.adapter.revision
    ]
    return list(dict.fromkeys(repos))


def _with_gates(
    plan: Plan, sources: Mapping[ModelRef, TensorSource], device: str, cache: bool
) -> Mapping[ModelRef, TensorSource]:
    """The sources, and for an MoE the routers its plan records, computed on `device` before any expert is read."""
    if plan.moe is None:
        return sources
    gates = plan.moe.gates
    base = {str(ref): source for ref, source in sources.items()}[str(plan.base_model)]
    cached = PromptStateCache(default_cache_dir()) if cache and gates.needs_prompts else None
    return {
        **sources,
        GATES_REF: GateSource(compute_gates(gates, base, device=resolve_device(device), cache=cached), gates.routed),
    }


def run_merge(
    recipe: RecipeLike | Plan,
    out_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    seed: int | None = None,
    out_shard_bytes: int | None = None,
    overwrite: bool = False,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    sources: Mapping[ModelRef, TensorSource] | None = None,
    shard_sink: ShardSink | None = None,
    repo_id: str | None = None,
    command: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    gguf_types: Sequence[str] | str = (),
    gguf_dir: str | os.PathLike | None = None,
    gguf_repo_id: str | None = None,
    strict: bool = False,
    gate_device: str = "auto",
    prompt_cache: bool = True,
    allow_all_same: bool = False,
    intermediate_dir: str | os.PathLike | None = None,
    on_stage: Callable[[str], None] | None = None,
    push_stages: Mapping[str, str] | None = None,
    push_private: bool = False,
    reuse_stages: Mapping[str, str] | None = None,
) -> MergeResult:
    """Plan (unless given a `Plan`), then merge tensor by tensor into `out_dir`, which appears only once complete.

    `recipe` is a merge recipe, a mergekit-moe config, a multi-stage recipe (a file of mergekit-multi's documents),
    or a `Plan` of any of them.
    `seed` (default 0) and `out_shard_bytes` (default 5 GB) are planning settings; a given `Plan` has its own.
    `sources` are the models, keyed by reference (default: opened here from the recipe, or a plan's pinned commits).
    An MoE's routers are computed before any expert is read, on `gate_device` (`auto`: a GPU when there is one),
    the prompts' states cached on disk unless `prompt_cache` is off; `allow_all_same` accepts experts that are all one
    model. A multi-stage recipe's stages are all planned before any runs; each intermediate output is written to a
    temporary directory and deleted once no later stage reads it (kept in `intermediate_dir`/NAME when given), and
    `on_stage` is told each stage's name (`final` for the last) as it starts. `push_stages` maps intermediate stages'
    names to Hub repos: each of those is pushed (private with `push_private`), with its own card, as soon as it is
    written (`MergeResult.stages_pushed`). `reuse_stages` maps intermediate stages' names to pushed outputs
    (`org/name@commit`, as `push_stages` made them) that are read instead of running the stage again.
    `shard_sink` receives each shard as soon as it is written (the Hub push uploads it then).
    The model card (README.md) names `repo_id` (default: the directory name) and `command` as the way to rerun.
    NaN or Inf values in inputs or outputs are warnings in the summary and recorded in the card; `strict`
    makes them an error, and refuses a recipe with
    warnings (keys or parameters that would be ignored). `overwrite` replaces only a previous merge's directory (see
    `mergehub.output`).
    With `gguf_types` (`"f16,q8_0"` or a list), the same pass also writes one GGUF file per type into `gguf_dir`
    (default: `{out_dir}-GGUF`), with a card naming `gguf_repo_id` (default: `{repo_id}-GGUF`).

    Raises:
        MergehubError: any problem with the recipe, the models, the merge or the output.
    """
    recipe_path = None if isinstance(recipe, (Recipe, MoEConfig, MultiStage, Plan)) else recipe
    target = resolve_target(out_dir, overwrite=overwrite, recipe=recipe_path)
    resolve_device(device)
    output = dict(
        device=device,
        overwrite=overwrite,
        token=token,
        shard_sink=shard_sink,
        repo_id=repo_id,
        command=command,
        on_progress=on_progress,
        should_stop=should_stop,
        gguf_types=gguf_types,
        gguf_dir=gguf_dir,
        gguf_repo_id=gguf_repo_id,
        strict=strict,
        gate_device=gate_device,
        prompt_cache=prompt_cache,
    )
    document = recipe if isinstance(recipe, Plan) else _document(recipe)
    if isinstance(document, MultiStage):
        settings = dict(
            out_shard_bytes=out_shard_bytes or DEFAULT_SHARD_BYTES,
            seed=seed or 0,
            token=token,
            strict=strict,
            cache_dir=cache_dir,
        )
        pushes = _stage_pushes(document, {**(push_stages or {}), **(reuse_stages or {})}, private=push_private)
        reused = {name: ModelRef.parse(ref) for name, ref in (reuse_stages or {}).items()}
        for name in reused:
            pushes.pop(name)
        return _run_stages(
            document,
            target,
            settings,
            output,
            intermediate_dir=intermediate_dir,
            on_stage=on_stage,
            pushes=pushes,
            reused=reused,
        )
    if push_stages or reuse_stages:
        raise RecipeError(
            "Only a multi-stage recipe has intermediate stages to push.",
            hint="Leave out --push-stage, or write the recipe as several YAML documents.",
        )
    with ExitStack() as stack:
        if sources is None:
            sources = stack.enter_context(open_sources(document, token=token, cache_dir=cache_dir))
        plan = _planned(
            document, sources, seed=seed, out_shard_bytes=out_shard_bytes, strict=strict, allow_all_same=allow_all_same
        )
        return _write(plan, sources, target, **output)


def _write(
    plan: Plan,
    sources: Mapping[ModelRef, TensorSource],
    target: Path,
    *,
    device: str,
    overwrite: bool,
    token: str | bool | None,
    shard_sink: ShardSink | None,
    repo_id: str | None,
    command: str | None,
    on_progress: Callable[[Progress], None] | None,
    should_stop: Callable[[], bool] | None,
    gguf_types: Sequence[str] | str,
    gguf_dir: str | os.PathLike | None,
    gguf_repo_id: str | None,
    strict: bool,
    gate_device: str,
    prompt_cache: bool,
    readmes: Mapping[str, bytes | None] | None = None,
) -> MergeResult:
    """Execute a plan into a staging directory beside `target`, add its files and card, then move it into place.

    `readmes` are the parents' cards by key (default: read from `sources`).
    """
    with ExitStack() as stack:
        sources = _with_gates(plan, sources, gate_device, prompt_cache)
        staging = create_staging(target)
        stack.callback(shutil.rmtree, staging, ignore_errors=True)
        merged_id = repo_id or target.name
        command = command or _rerun_command(plan, target.name)
        gguf_output = None
        if gguf_types:
            from mergehub.gguf.types import require_gguf

            require_gguf()
            from mergehub.gguf.output import open_gguf

            hub_parents = _hub_parents(plan)
            gguf_output = open_gguf(
                plan,
                name=merged_id.split("/")[-1],
                types=gguf_types,
                overwrite=overwrite,
                base_models=hub_parents,
                target=Path(gguf_dir) if gguf_dir else target.with_name(f"{target.name}-GGUF"),
                tags=("merge", "mergehub"),
            )
            stack.callback(gguf_output.close)
        writer = ShardedWriter(staging, plan.shards, shard_sink)
        sink: TensorSink = FanOutWriter(writer, gguf_output.sink) if gguf_output else writer
        try:
            stats = execute(
                plan,
                sources,
                sink,
                device=resolve_device(device),
                on_progress=on_progress,
                should_stop=should_stop,
                strict=strict,
            )
            writer.write_index()
            if shard_sink is not None:
                shard_sink.flush()
        finally:
            writer.close()
        files = plan.output_files()
        for filename, data in files.items():
            with writing(staging / filename):
                (staging / filename).write_bytes(data)
        lineage_graph = merge_lineage(merged_id, plan, token)
        if readmes is None:
            readmes = _readmes(sources)
        card = plan_card(
            plan,
            tuple(writer.results),
            repo_id=merged_id,
            command=command,
            readmes=readmes,
            lineage=lineage_graph,
            non_finite=tuple(n.describe() for n in stats.non_finite),
        )
        with writing(staging / "README.md"):
            (staging / "README.md").write_text(str(card), encoding="utf-8")
        gguf_result = None
        if gguf_output is not None:
            types = ",".join(f.file_type.lower() for f in gguf_output.plan.files)
            gguf_id = gguf_repo_id or f"{merged_id}-GGUF"
            gguf_result = gguf_output.finish_card(
                gguf_id,
                merged_id,
                source_on_hub=repo_id is not None,
                readme=str(card),
                lineage=lineage_graph,
                command=f"{command} --gguf {types}",
            )
        move_into_place(staging, target)
    shard_names = [shard.filename for shard in writer.results]
    all_files = tuple(sorted([*files, "README.md", *shard_names, INDEX_NAME]))
    return MergeResult(target, plan, stats, tuple(writer.results), all_files, gguf_result)


def _rerun_command(plan: Plan, name: str) -> str:
    """The command that remakes the output from the recipe file written beside it."""
    if plan.moe is not None:
        return f"mergehub moe {MOE_RECIPE_FILE} {name} --seed {plan.seed} --out-shard-size {plan.max_shard_bytes}"
    return f"mergehub merge {RECIPE_FILE} {name} --seed {plan.seed} --out-shard-size {plan.max_shard_bytes}"


def _stage_pushes(stages: MultiStage, push_stages: Mapping[str, str], *, private: bool) -> dict[str, dict[str, Any]]:
    """`push_merge`'s arguments for each intermediate stage to push, checked against the recipe's stages.

    Raises:
        RecipeError: a name is no intermediate stage of the recipe, or a repo is no Hub repo name.
    """
    intermediate = [s.name for s in stages.stages if s is not stages.final and s.name]
    for name, repo in push_stages.items():
        if name not in intermediate:
            raise RecipeError(
                f"--push-stage names `{name}`, which is not an intermediate stage of this recipe.",
                hint=(f"Its intermediate stages are: {', '.join(intermediate)}. " if intermediate else "")
                + "The final stage is pushed with --push.",
            )
        if not is_hub_id(repo.partition("@")[0]):  # a reused stage's output is pinned: `org/name@commit`
            raise RecipeError(
                f"--push-stage {name}={repo!r}: not a Hub repo name.",
                hint="Write NAME=REPO, the repo as `name` (your namespace) or `org/name`.",
            )
    return {name: {"repo_id": repo, "private": private} for name, repo in push_stages.items()}


def _run_stages(
    stages: MultiStage,
    target: Path,
    settings: dict[str, Any],
    output: dict[str, Any],
    *,
    intermediate_dir: str | os.PathLike | None,
    on_stage: Callable[[str], None] | None,
    pushes: Mapping[str, Mapping[str, Any]],
    reused: Mapping[str, ModelRef],
) -> MergeResult:
    """Plan every stage, then run them in order; an intermediate output is deleted after the last stage reading it."""
    last_use = stages.last_use()
    with ExitStack() as stack:
        opened: dict[ModelRef, TensorSource] = {}
        plans = _plan_stages(stages, opened, stack, **settings)
        scratch = (
            Path(intermediate_dir)
            if intermediate_dir
            else Path(tempfile.mkdtemp(prefix=".mergehub-stages-", dir=target.parent))
        )
        if not intermediate_dir:
            stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        outputs: dict[str, TensorSource] = {}
        directories: dict[str, Path] = {}
        pushed: list[tuple[str, PushResult]] = []
        for index, (stage, plan) in enumerate(zip(stages.stages, plans)):
            if on_stage is not None:
                on_stage(stage.name or "final")
            try:
                if stage.name in reused:  # pushed before, up to date: read, not run again
                    outputs[stage.name] = _reused_output(stage.name, reused[stage.name], plan, stack, settings)
                    continue
                sources = _stage_sources(
                    stage.recipe, opened, outputs, stack, token=settings["token"], cache_dir=settings["cache_dir"]
                )
                if stage is stages.final:
                    readmes = _readmes({**opened, **sources})
                    result = _write(plan, sources, target, **output, readmes=readmes)
                else:
                    directory = scratch / str(stage.name)
                    quiet = {
                        **output,
                        "shard_sink": None,
                        "repo_id": None,
                        "command": None,
                        "gguf_types": (),
                        "overwrite": True,
                    }
                    if stage.name in pushes:  # its own repo and card, kept on disk until no stage reads it
                        _, push = push_merge(
                            plan,
                            **pushes[stage.name],
                            out_dir=directory,
                            token=settings["token"],
                            sources=sources,
                            **{k: quiet[k] for k in ("device", "overwrite", "on_progress", "should_stop", "strict")},
                        )
                        pushed.append((stage.name, push))
                    else:
                        _write(plan, sources, directory, **quiet)
                    directories[str(stage.name)] = directory
                    outputs[str(stage.name)] = LocalSource(directory, label=f"stage `{stage.name}`")
            except MergehubError as e:
                raise in_stage(e, stage.name, stage.first_line) from e
            for name, last in last_use.items():  # an output no later stage reads is deleted now (unless kept)
                if last == index and not intermediate_dir and name in directories:
                    outputs.pop(name).close()
                    shutil.rmtree(directories.pop(name), ignore_errors=True)
        return dataclasses.replace(result, stages_pushed=tuple(pushed))


def _reused_output(name: str, ref: ModelRef, plan: Plan, stack: ExitStack, settings: Mapping[str, Any]) -> TensorSource:
    """A stage's output pushed by an earlier run, opened from the Hub; its tensors must be what the stage plans.

    Raises:
        PlanError: the pushed output's tensors (names, shapes, dtypes) differ from the stage's plan.
    """
    source = stack.enter_context(_open_sources([ref], token=settings["token"], cache_dir=settings["cache_dir"]))[ref]
    planned = PlannedSource(name, plan).tensors()
    pushed = source.tensors()
    layout = {n: (t.dtype, t.shape) for n, t in planned.items()}
    differ = sorted(
        set(layout) ^ set(pushed)
        | {n for n in layout.keys() & pushed.keys() if layout[n] != (pushed[n].dtype, pushed[n].shape)}
    )
    if differ:
        raise PlanError(
            f"The output of stage `{name}` pushed to {ref} differs from what the stage makes now "
            f"({len(differ)} tensors, e.g. {differ[0]}).",
            hint="Run the stage again: leave it out of the stages to reuse (the Action: `rerun`).",
        )
    return source


def push_merge(
    recipe: RecipeLike | Plan,
    repo_id: str,
    *,
    out_dir: str | os.PathLike | None = None,
    private: bool = False,
    force: bool = False,
    token: str | bool | None = None,
    eval_tasks: Sequence[str] = (),
    eval_options: Mapping[str, Any] | None = None,
    gguf_repo: str | None = None,
    before_commit: Callable[[MergeResult], None] | None = None,
    **merge_options: Any,
) -> tuple[MergeResult, PushResult]:
    """Merge and push to `repo_id` (`name` means the token's user namespace) in one commit.

    Shards upload while the merge goes on; without `out_dir` each is deleted once uploaded
    (kept until the commit when `eval_tasks` are scored first: the card then carries the scores).
    A failed merge or upload leaves no commit, and deletes the repo if this call created it;
    a failed evaluation only leaves the scores out (add them later with `mergehub eval --push-card`).
    With `gguf_types` in `merge_options`, the GGUF files then go to their own repo, `gguf_repo`
    (default: `{repo_id}-GGUF`), in the returned `PushResult.gguf`.
    `before_commit` may add files to `result.out_dir` (or edit its README.md) before the one commit.

    Raises:
        PublishError: no token, a repo mergehub did not make (without `force`), or an upload failure.
        MergehubError: any problem with the merge itself.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    full_id, created, ours = prepare_repo(api, repo_id, private=private, force=force)
    gguf_id = None
    if merge_options.get("gguf_types"):
        gguf_id = gguf_repo or f"{full_id}-GGUF"
        gguf_id = gguf_id if "/" in gguf_id else f"{full_id.split('/')[0]}/{gguf_id}"
    target, scratch = staging_directory(out_dir)
    uploader = ShardUploader(api, full_id, keep_local=out_dir is not None or bool(eval_tasks))
    try:
        result = run_merge(
            recipe, target, token=token, shard_sink=uploader, repo_id=full_id, gguf_repo_id=gguf_id, **merge_options
        )
        if eval_tasks:
            try:
                evaluate_merge(result, eval_tasks, token=token, **(eval_options or {}))
            except MergehubError as e:
                logger.warning("Evaluation failed, pushing without scores: %s", e)
        if before_commit is not None:
            before_commit(result)
        commit = commit_merge(
            api, full_id, result.out_dir, uploader.operations(), result.plan.method, replace_weights=ours
        )
    except BaseException as e:
        uploader.close()
        if created:
            delete_created_repo(api, full_id, e)
        if scratch is not None:
            scratch.cleanup()
        raise
    try:
        gguf_pushed = push_gguf_files(result.gguf, private=private, force=force, token=token) if result.gguf else None
    except MergehubError as e:
        raise PublishError(
            f"The merge is on {full_id}, but its GGUF files were not pushed: {e.message}",
            hint=f"Push them with `mergehub gguf {full_id} OUT --types TYPES --push`.",
        ) from e
    finally:
        if scratch is not None:
            scratch.cleanup()
    return result, PushResult(full_id, commit.oid, commit.commit_url, created, gguf=gguf_pushed)


def push_gguf_files(
    result: GGUFResult, *, private: bool = False, force: bool = False, token: str | bool | None = None
) -> PushResult:
    """Push a GGUF directory to the repo its card names, creating it if needed (deleted again if the commit fails).

    Raises:
        PublishError: no token, a repo mergehub did not make (without `force`), or an upload failure.
    """
    from huggingface_hub import HfApi

    from mergehub.gguf.output import push_gguf

    api = HfApi(token=token)
    repo_id, created, _ = prepare_repo(api, result.repo_id, private=private, force=force)
    try:
        commit = push_gguf(api, repo_id, result)
    except BaseException as e:
        if created:
            delete_created_repo(api, repo_id, e)
        raise
    return PushResult(repo_id, commit.oid, commit.commit_url, created)


def gguf_types(types: str | Sequence[str]) -> tuple[str, ...]:
    """Check GGUF type names (`"f16,q8_0"`) and that the `gguf` package is installed; the canonical names.

    Raises:
        GGUFError: an unknown type, a k-quant (needs llama.cpp), or no `gguf` package.
    """
    from mergehub.gguf.types import parse_types, require_gguf

    parsed = parse_types(types)
    require_gguf()
    return parsed


def hub_repo_id(repo_id: str, *, token: str | bool | None = None) -> str:
    """A repo name completed with the token's user namespace (`name` → `user/name`)."""
    from huggingface_hub import HfApi

    return full_repo_id(HfApi(token=token), repo_id)


def convert_gguf(
    model: str | os.PathLike,
    out_dir: str | os.PathLike,
    types: Sequence[str] | str,
    *,
    name: str | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GGUFResult:
    """Write an existing model (a directory or `org/name[@revision]`, streamed) as GGUF files into `out_dir`.

    The model's tensors go through the merge executor as a one-model passthrough, so a Hub model is read by
    byte ranges and never downloaded whole. The card names `repo_id` (default: `{model name}-GGUF`).

    Raises:
        GGUFError: unsupported architecture or type, or an unreadable tokenizer.
        MergehubError: the model cannot be read, or the output cannot be written.
    """
    from mergehub.gguf.types import parse_types, require_gguf

    require_gguf()
    from mergehub.gguf.output import open_gguf

    parsed = parse_recipe(yaml.safe_dump({"merge_method": "passthrough", "models": [{"model": str(model)}]}))
    with ExitStack() as stack:
        sources = stack.enter_context(_open_sources(parsed, token=token, cache_dir=cache_dir))
        plan = _plan_merge(parsed, sources)
        source = next(iter(sources.values()))
        on_hub = source.revision is not None
        label = getattr(source, "repo_id", None) or Path(model).resolve().name
        name = name or label.split("/")[-1]
        output = open_gguf(plan, name=name, types=types, target=Path(out_dir), overwrite=overwrite)
        stack.callback(output.close)
        execute(
            plan, sources, output.sink, device=resolve_device(device), on_progress=on_progress, should_stop=should_stop
        )
        lineage_graph = walk_lineage(label, max_depth=LINEAGE_DEPTH, token=token) if on_hub else None
        typed = ",".join(t.lower() for t in parse_types(types))
        return output.finish_card(
            repo_id or f"{label}-GGUF",
            label,
            source_on_hub=on_hub,
            readme=source.read_file("README.md"),
            lineage=lineage_graph,
            command=f"mergehub gguf {label} {Path(out_dir).name} --types {typed}",
        )


def build_card(target: str, *, token: str | bool | None = None, seed: int = 0) -> ModelCard:
    """The model card of an existing merge (a directory or a Hub repo), from its mergekit_config.yml."""
    recipe_text, shards, name = merged_model_files(target, token)
    parsed = parse_recipe(recipe_text)
    with _open_sources(parsed, token=token) as sources:
        plan = _plan_merge(parsed, sources, seed=seed)
        readmes = _readmes(sources)
    command = f"mergehub merge {RECIPE_FILE} {name.split('/')[-1]} --seed {seed}"
    return plan_card(
        plan, shards, repo_id=name, command=command, readmes=readmes, lineage=merge_lineage(name, plan, token)
    )


def lineage(repo_id: str, *, max_depth: int = 5, token: str | bool | None = None) -> LineageGraph:
    """The ancestry of a Hub model, from its parents' cards and recipes (`token=False`: anonymous)."""
    return walk_lineage(repo_id, max_depth=max_depth, token=token)


def evaluate(model: str | os.PathLike, tasks: Sequence[str], **options: Any) -> EvalReport:
    """Score a model directory or Hub repo with lm-eval (needs `pip install 'mergehub[eval]'`)."""
    from mergehub.evaluation import evaluate as run_evaluation

    return run_evaluation(model, tasks, **options)


def score(
    model: str | os.PathLike,
    tasks: Sequence[str],
    *,
    parents: Sequence[str] = (),
    token: str | bool | None = None,
    **options: Any,
) -> tuple[EvalReport, str | None]:
    """Score a model, and each parent on the same tasks and settings; returns the report and a comparison table.

    A parent whose card already holds scores made the same way is not evaluated again.
    """
    from mergehub.evaluation import compare, parent_reports

    report = evaluate(model, tasks, token=token, **options)
    if not parents:
        return report, None
    return report, compare(report, parent_reports(report, parents, tasks, token=token, **options))


def evaluate_merge(
    result: MergeResult, tasks: Sequence[str], *, parents: bool = False, token: str | bool | None = None, **options: Any
) -> tuple[EvalReport, str | None]:
    """Score a fresh merge (and, with `parents`, each parent at its pinned revision) and put the scores in its card."""
    from mergehub.evaluation import add_scores_to_card

    refs = [str(m.pinned) for m in result.plan.models] if parents else []
    report, comparison = score(result.out_dir, tasks, parents=refs, token=token, **options)
    card = result.out_dir / "README.md"
    card.write_text(add_scores_to_card(card.read_text(encoding="utf-8"), report, comparison), encoding="utf-8")
    return report, comparison


def card_with_scores(
    target: str, report: EvalReport, comparison: str | None = None, *, token: str | bool | None = None
) -> ModelCard:
    """A model's card (directory or Hub repo) with the report's scores added to its model-index and body."""
    from mergehub.evaluation import add_scores_to_card

    directory = Path(target)
    if directory.is_dir():
        text = (directory / "README.md").read_text(encoding="utf-8") if (directory / "README.md").is_file() else ""
    else:
        source = open_model(target, token=token)
        try:
            text = (source.read_file("README.md") or b"").decode("utf-8")
        finally:
            source.close()
    return ModelCard(add_scores_to_card(text, report, comparison))


# -- LoRA extraction -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractionResult:
    """A finished LoRA extraction: where the adapter is, its plan, what it took, and each module's rank and error."""

    out_dir: Path
    plan: Plan
    stats: ExecutionStats
    shard: ShardResult
    files: tuple[str, ...]

    @property
    def ranks(self) -> dict[str, int]:
        """The rank given to each module extracted as LoRA."""
        return module_ranks(self.plan, self.stats.measures)

    @property
    def errors(self) -> dict[str, float]:
        """Each LoRA module's relative reconstruction error ‖delta − B·A‖_F / ‖delta‖_F."""
        return {
            job.removesuffix(".weight"): m["relative_error"]
            for job, m in self.stats.measures.items()
            if "relative_error" in m
        }

    def figures(self) -> str:
        """What the extraction gave and took, in one line: modules, ranks, errors, time, bytes, peak memory."""
        s, ranks, errors = self.stats, sorted(set(self.ranks.values())), list(self.errors.values())
        rank = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
        saved = self.plan.config["modules_to_save"]
        return (
            f"Extracted {len(errors)} modules as LoRA (rank {rank}){f', saved {len(saved)} whole' if saved else ''} in "
            f"{s.seconds:.1f} s: relative error mean {sum(errors) / len(errors):.4g}, max {max(errors):.4g}; read "
            f"{format_size(s.bytes_read)}, wrote {format_size(self.shard.size)}, "
            f"peak RSS {format_size(s.peak_rss_bytes)}"
        )

    def summary(self) -> str:
        """The figures and the output directory, then the adapter file's sha256 and any notes from the plan."""
        lines = [f"{self.figures()} -> {self.out_dir}", f"  sha256 {self.shard.sha256}  {self.shard.filename}"]
        return "\n".join(
            lines
            + [f"Note: {w.message}" for w in self.plan.warnings]
            + [f"Warning: {w}" for w in self.stats.warnings()]
        )


_ADAPTER_MARKERS = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)


def _extraction_sources(
    base: str, model: str, token: str | bool | None, cache_dir: str | os.PathLike | None
) -> tuple[ModelRef, ModelRef, Sources]:
    """The base and the fine-tune, parsed and opened (a context manager closing both).

    Raises:
        RecipeError: both name the same model.
    """
    base_ref, model_ref = ModelRef.parse(str(base)), ModelRef.parse(str(model))
    if str(base_ref) == str(model_ref):
        raise RecipeError(
            f"The base and the fine-tune are both {base_ref}.",
            hint="Give the fine-tune as --model, its base as --base.",
        )
    return base_ref, model_ref, _open_sources([base_ref, model_ref], token=token, cache_dir=cache_dir)


def plan_extraction(base: str, model: str, options: ExtractOptions, *, token: str | bool | None = None) -> Plan:
    """Plan a LoRA extraction from configs and headers only (the `--dry-run`): every module's fate and largest factors.

    Raises:
        MergehubError: an option is out of range, a model cannot be read, or the two do not fit together.
    """
    base_ref, model_ref, sources = _extraction_sources(base, model, token, None)
    with sources:
        return _plan_extraction(base_ref, model_ref, sources[base_ref], sources[model_ref], options)


def extract_lora(
    base: str,
    model: str,
    out_dir: str | os.PathLike,
    options: ExtractOptions,
    *,
    overwrite: bool = False,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    repo_id: str | None = None,
    spec_text: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExtractionResult:
    """Extract a PEFT LoRA adapter of `model` (a fine-tune) relative to `base` into `out_dir`, tensor by tensor.

    Both models may be directories or Hub repos (read by byte ranges, pinned to commits). The adapter holds
    adapter_model.safetensors, adapter_config.json (`base_model_name_or_path` and `revision` pinned to the base),
    the extraction as a file, and a card naming `repo_id` (default: the directory name) with each module's
    reconstruction error. `out_dir` appears only once complete; `overwrite` replaces only a previous adapter.

    Raises:
        MergehubError: an option, a model, the extraction or the output.
    """
    target = resolve_target(out_dir, overwrite=overwrite, markers=_ADAPTER_MARKERS)
    torch_device = resolve_device(device)
    base_ref, model_ref, sources = _extraction_sources(base, model, token, cache_dir)
    with sources, ExitStack() as stack:
        base_source, model_source = sources[base_ref], sources[model_ref]
        plan = _plan_extraction(
            base_ref,
            model_ref,
            base_source,
            model_source,
            options,
            spec_text=spec_text,
        )
        spec = ExtractionSpec(base_ref, model_ref, options)
        staging = create_staging(target)
        stack.callback(shutil.rmtree, staging, ignore_errors=True)
        writer = BoundedWriter(staging, plan.shards[0])
        stack.callback(writer.close)
        stats = execute(plan, sources, writer, device=torch_device, on_progress=on_progress, should_stop=should_stop)
        shard = writer.finish()
        files = {
            ADAPTER_CONFIG: json.dumps(adapter_config(plan, stats.measures), indent=2) + "\n",
            SPEC_FILENAME: plan.recipe_text,
        }
        name = repo_id or target.name
        rows = (embedding_rows(base_source), embedding_rows(model_source))
        parents = (
            parent_card(
                str(base_ref), base_source.revision, base_source.read_file("README.md"), gated=base_source.gated
            ),
            parent_card(
                str(model_ref), model_source.revision, model_source.read_file("README.md"), gated=model_source.gated
            ),
        )

        def card(lineage: str | None) -> ModelCard:
            data = adapter_card(
                name,
                plan,
                stats.measures,
                [shard],
                spec_yaml=plan.recipe_text,
                command=spec.command(target.name),
                base=parents[0],
                source=parents[1],
                lineage_mermaid=lineage,
                vocab_sizes=rows if rows[0] != rows[1] and None not in rows else None,
            )  # type: ignore[arg-type]
            return render_adapter_card(data)

        local = {ref.path for ref, s in ((base_ref, base_source), (model_ref, model_source)) if s.revision is None}
        graph = walk_lineage(
            name, max_depth=LINEAGE_DEPTH, token=token, root_card=str(card(None)), **hub_readers(local, token)
        )
        files["README.md"] = str(card(graph.to_mermaid()))
        for filename, text in files.items():
            with writing(staging / filename):
                (staging / filename).write_text(text, encoding="utf-8")
        move_into_place(staging, target)
    return ExtractionResult(target, plan, stats, shard, tuple(sorted([shard.filename, *files])))


def push_extraction(
    base: str,
    model: str,
    repo_id: str,
    options: ExtractOptions,
    *,
    out_dir: str | os.PathLike | None = None,
    private: bool = False,
    force: bool = False,
    token: str | bool | None = None,
    **extract_options: Any,
) -> tuple[ExtractionResult, PushResult]:
    """Extract a LoRA adapter and push it to `repo_id` (`name` means the token's user namespace) in one commit.

    A failed extraction or upload leaves no commit, and deletes the repo if this call created it.

    Raises:
        PublishError: no token, a repo mergehub did not make (without `force`), or an upload failure.
        MergehubError: any problem with the extraction itself.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    full_id, created, ours = prepare_repo(api, repo_id, private=private, force=force)
    target, scratch = staging_directory(out_dir)
    try:
        result = extract_lora(base, model, target, options, token=token, repo_id=full_id, **extract_options)
        commit = commit_merge(
            api,
            full_id,
            result.out_dir,
            [],
            "extract_lora",
            replace_weights=ours,
            message="Add LoRA adapter extracted with mergehub",
        )
    except BaseException:
        if created:
            delete_created_repo(api, full_id)
        raise
    finally:
        if scratch is not None:
            scratch.cleanup()
    return result, PushResult(full_id, commit.oid, commit.commit_url, created)
