"""The public surface of mergehub: load a recipe, open its models, plan a merge, run it, publish it.

The pipeline, each step in its module: `recipe` (YAML → `Recipe`) → `sources` (`open_sources`:
headers, configs, small files) → `plan` (`plan_merge`: the whole merge as a `Plan`) → `executor`
(tensor by tensor, with `methods`) → `writer` (safetensors shards; GGUF files through `gguf`) →
`publish` (card, lineage, push). This module only strings them together.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
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
from mergehub.output import create_staging, move_into_place, resolve_target
from mergehub.plan import DEFAULT_SHARD_BYTES, Plan, embedding_rows
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
from mergehub.recipe import RECIPE_FILE, ModelRef, Recipe, load_recipe, parse_recipe
from mergehub.sources import INDEX_NAME, Sources, TensorSource, open_source
from mergehub.sources import open_sources as _open_sources
from mergehub.sources.adapter import AdapterSource
from mergehub.sources.base import ADAPTER_CONFIG, ADAPTER_WEIGHTS
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
    "open_sources",
    "plan_merge",
    "plan_merges",
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

RecipeLike = Recipe | str | os.PathLike


@dataclass(frozen=True)
class MergeResult:
    """A finished merge: where it is, what was planned, and what it took."""

    out_dir: Path
    plan: Plan
    stats: ExecutionStats
    shards: tuple[ShardResult, ...]
    files: tuple[str, ...]
    gguf: GGUFResult | None = None

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


def _recipe(recipe: RecipeLike) -> Recipe:
    """A recipe object, or the recipe file read (its own text kept, so comments survive in mergekit_config.yml)."""
    return recipe if isinstance(recipe, Recipe) else parse_recipe(safe_yaml.read_text(recipe))


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
) -> Plan:
    """Plan a merge from configs, headers and small files only: the `--dry-run`. `strict`: a warning is an error.

    Without `sources`, the recipe's models are opened (and closed again) here.
    """
    parsed = _recipe(recipe)
    with ExitStack() as stack:
        if sources is None:
            sources = stack.enter_context(_open_sources(parsed, token=token))
        return _plan_merge(
            parsed,
            sources,
            out_shard_bytes=out_shard_bytes,
            seed=seed,
            strict=strict,
        )


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
) -> Plan:
    """The plan to run: `recipe` itself when it is one (whose seed and shard size cannot be changed), else planned
    now."""
    if not isinstance(recipe, Plan):
        return plan_merge(
            recipe, sources, out_shard_bytes=out_shard_bytes or DEFAULT_SHARD_BYTES, seed=seed or 0, strict=strict
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
) -> MergeResult:
    """Plan (unless given a `Plan`), then merge tensor by tensor into `out_dir`, which appears only once complete.

    `seed` (default 0) and `out_shard_bytes` (default 5 GB) are planning settings; a given `Plan` has its own.
    `sources` are the models, keyed by reference (default: opened here from the recipe, or a plan's pinned commits).
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
    recipe_path = None if isinstance(recipe, (Recipe, Plan)) else recipe
    target = resolve_target(out_dir, overwrite=overwrite, recipe=recipe_path)
    torch_device = resolve_device(device)
    with ExitStack() as stack:
        if sources is None:
            sources = stack.enter_context(open_sources(recipe, token=token, cache_dir=cache_dir))
        plan = _planned(recipe, sources, seed=seed, out_shard_bytes=out_shard_bytes, strict=strict)
        staging = create_staging(target)
        stack.callback(shutil.rmtree, staging, ignore_errors=True)
        merged_id = repo_id or target.name
        command = (
            command
            or f"mergehub merge {RECIPE_FILE} {target.name} --seed {plan.seed} --out-shard-size {plan.max_shard_bytes}"
        )
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
                device=torch_device,
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
    except BaseException:
        uploader.close()
        if created:
            delete_created_repo(api, full_id)
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
    except BaseException:
        if created:
            delete_created_repo(api, repo_id)
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
