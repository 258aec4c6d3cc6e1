"""The public surface of mergehub: load a recipe, plan a merge, run it."""

from __future__ import annotations

import hashlib
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

if TYPE_CHECKING:
    from mergehub.evaluation import EvalReport
    from mergehub.gguf.export import GGUFPlan
    from mergehub.gguf.output import GGUFOutput, GGUFResult

from mergehub.artifacts import RECIPE_FILENAME as RECIPE_FILE
from mergehub import safe_yaml
from mergehub.artifacts import artifact_files
from mergehub.errors import MergehubError, OutputError, PublishError, RecipeError
from mergehub.executor import DEFAULT_PREFETCH_BYTES, ExecutionStats, Progress, execute, resolve_device
from mergehub.output import create_staging, move_into_place, resolve_target
from mergehub.plan import DEFAULT_SHARD_BYTES, Plan
from mergehub.plan import output_vocabulary
from mergehub.plan import plan_merge as _plan_merge
from mergehub.publish.card import merge_card, parent_card, render_card
from mergehub.publish.lineage import LineageGraph, hub_reader, walk_lineage
from mergehub.publish.push import PushResult, ShardUploader, commit_merge, full_repo_id, prepare_repo, staging_directory
from mergehub.recipe import ModelRef, Recipe, load_recipe, parse_recipe
from mergehub.sources import TensorSource, open_source
from mergehub.vocab import OutputTokenizer, resolve_chat_template, tokenizer_files
from mergehub.writer import FanOutWriter, ShardedWriter, ShardResult, ShardSink, StateDictWriter, TensorSink, writing

LINEAGE_DEPTH = 4
_MAX_LISTED = 20
logger = logging.getLogger(__name__)

__all__ = [
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
]


@dataclass(frozen=True)
class MergeResult:
    """A finished merge: where it is, what was planned, and what it took."""

    out_dir: Path
    plan: Plan
    stats: ExecutionStats
    shards: tuple[ShardResult, ...]
    files: tuple[str, ...]
    seed: int
    gguf: GGUFResult | None = None

    def summary(self) -> str:
        """One line of figures, then each shard's sha256, any warning (NaN or Inf found), and the GGUF files."""
        s = self.stats
        rate = (s.bytes_read + s.bytes_written) / max(s.seconds, 1e-9) / 1e9
        lines = [
            f"Merged {len(self.plan.jobs)} tensors in {s.seconds:.1f} s: read {s.bytes_read / 1e9:.2f} GB, "
            f"wrote {s.bytes_written / 1e9:.2f} GB ({rate:.2f} GB/s), peak RSS {s.peak_rss_bytes / 2**30:.2f} GiB -> {self.out_dir}"
        ]
        lines += [f"  sha256 {shard.sha256}  {shard.filename}" for shard in self.shards]
        lines += [f"Warning: {w}" for w in self.stats.warnings()]
        if self.gguf is not None:
            lines.append(self.gguf.summary())
        return "\n".join(lines)


def _recipe_and_text(recipe: Recipe | str | os.PathLike) -> tuple[Recipe, str]:
    """The recipe and its YAML text (the file's own text, so comments survive in mergekit_config.yml)."""
    if isinstance(recipe, Recipe):
        return recipe, yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
    text = safe_yaml.read_text(recipe)
    return parse_recipe(text), text


def open_model(ref: str, *, token: str | bool | None = None) -> TensorSource:
    """One model (a directory or `org/name[@revision]`) as a tensor source: config, headers, files; no weights read."""
    return open_source(ModelRef.parse(ref), token=token)


def open_sources(recipe: Recipe, *, token: str | bool | None = None, cache_dir: str | os.PathLike | None = None) -> dict[ModelRef, TensorSource]:
    """Open every model the recipe references, base first; Hub references resolve to a commit."""
    return {ref: open_source(ref, token=token, cache_dir=cache_dir) for ref in recipe.referenced_models()}


@dataclass(frozen=True)
class _Prepared:
    """A checked plan, with the output tokenizer and chat template it needs."""

    plan: Plan
    tokenizer: OutputTokenizer | None
    chat_template: str | None


def _prepare(recipe: Recipe, sources: dict[ModelRef, TensorSource], out_shard_bytes: int = DEFAULT_SHARD_BYTES,
             strict: bool = False) -> _Prepared:
    """Everything checked before any weight is read: vocabulary, chat template and the plan (and, if strict, no warnings)."""
    vocabulary = output_vocabulary(recipe, sources)
    chat_template = resolve_chat_template(recipe.chat_template, {str(ref): tokenizer_files(s) for ref, s in sources.items()})
    plan = _plan_merge(recipe, sources, out_shard_bytes=out_shard_bytes, prefetch_bytes=DEFAULT_PREFETCH_BYTES, vocabulary=vocabulary)
    if strict and plan.warnings:
        shown = [f"  {w}" for w in plan.warnings[:_MAX_LISTED]]
        more = len(plan.warnings) - len(shown)
        raise RecipeError(
            f"The recipe sets {len(plan.warnings)} thing(s) that would be ignored (strict mode):\n"
            + "\n".join(shown + ([f"  ... and {more} more"] if more > 0 else [])),
            hint="Remove or fix them, or merge without strict mode to ignore them as mergekit does.",
            warnings=plan.warnings,
        )
    return _Prepared(plan, vocabulary[0] if vocabulary else None, chat_template)


def plan_merge(
    recipe: Recipe | str | os.PathLike, *, out_shard_bytes: int = DEFAULT_SHARD_BYTES, token: str | bool | None = None,
    strict: bool = False,
) -> Plan:
    """Plan a merge from configs and headers only: the `--dry-run`. `strict`: a warning is an error."""
    parsed, _ = _recipe_and_text(recipe)
    sources = open_sources(parsed, token=token)
    try:
        return _prepare(parsed, sources, out_shard_bytes, strict).plan
    finally:
        for source in sources.values():
            source.close()


def plan_merges(
    recipes: Sequence[Recipe], *, token: str | bool | None = None, cache_dir: str | os.PathLike | None = None
) -> list[Plan]:
    """Plan several recipes (the variants of an experiment), opening each model they reference once.

    Raises:
        MergehubError: the first recipe that cannot be planned; its problem says which model or setting.
    """
    refs = list(dict.fromkeys(ref for recipe in recipes for ref in recipe.referenced_models()))
    with ExitStack() as stack:
        sources: dict[ModelRef, TensorSource] = {}
        for ref in refs:
            sources[ref] = open_source(ref, token=token, cache_dir=cache_dir)
            stack.callback(sources[ref].close)
        return [_prepare(recipe, {ref: sources[ref] for ref in recipe.referenced_models()}).plan for recipe in recipes]


@dataclass(frozen=True)
class MemoryMerge:
    """A merge held in memory: the output tensors by name, and the small files a model directory would hold."""

    plan: Plan
    tensors: dict[str, Any]
    files: dict[str, bytes]
    stats: ExecutionStats


def merge_in_memory(
    recipe: Recipe | str | os.PathLike,
    *,
    device: str = "cpu",
    seed: int = 0,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> MemoryMerge:
    """Plan, then merge into a state dict in memory; no shard is written.

    It needs the output's bytes (`plan.write_bytes`) in memory besides the merge's own working memory
    (`plan.peak_memory_bytes`). `files` holds config.json, the tokenizer files and the recipe, as `run_merge` writes them.

    Raises:
        MergehubError: any problem with the recipe, the models or the merge.
    """
    parsed, text = _recipe_and_text(recipe)
    with ExitStack() as stack:
        sources = open_sources(parsed, token=token, cache_dir=cache_dir)
        for source in sources.values():
            stack.callback(source.close)
        prepared = _prepare(parsed, sources)
        ordered = list(sources.values())
        writer = StateDictWriter(prepared.plan.shards)
        stats = execute(prepared.plan, ordered, writer, device=resolve_device(device), seed=seed)
        files = artifact_files(prepared.plan, ordered, text, tokenizer=prepared.tokenizer, chat_template=prepared.chat_template)
    return MemoryMerge(prepared.plan, writer.state_dict(), files, stats)


def _lineage(repo_id: str, sources: dict[ModelRef, TensorSource], recipe_text: str, token: str | bool | None) -> LineageGraph:
    """The merge's family tree: its parents' Hub cards and recipes, walked up; local parents are leaves."""
    local = {str(ref) for ref, s in sources.items() if s.revision is None}

    def hub_only(read: Callable[[str], str | None]) -> Callable[[str], str | None]:
        return lambda model: None if model in local else read(model)

    return walk_lineage(
        repo_id, max_depth=LINEAGE_DEPTH, root_recipe=recipe_text, token=token,
        read_card=hub_only(hub_reader("README.md", token)), read_recipe=hub_only(hub_reader(RECIPE_FILE, token)),
    )


def _model_card(
    plan: Plan, shards: tuple[ShardResult, ...], sources: dict[ModelRef, TensorSource], recipe_text: str, *,
    seed: int, repo_id: str, command: str, token: str | None, lineage: LineageGraph | None = None,
    stats: ExecutionStats | None = None,
) -> ModelCard:
    """The merged model's card: parents with pinned revisions and licenses, recipe, checksums, lineage.

    With the merge's `stats`, the card also records the tensors found holding NaN or Inf values.
    """
    parents = [parent_card(str(ref), s.revision, s.read_file("README.md"), gated=s.gated) for ref, s in sources.items()]
    lineage = lineage or _lineage(repo_id, sources, recipe_text, token)
    card = merge_card(repo_id, plan, shards, recipe_yaml=recipe_text, seed=seed, command=command, parents=parents,
                      lineage_mermaid=lineage.to_mermaid(), non_finite=tuple(n.describe() for n in stats.non_finite) if stats else ())
    return render_card(card)


def _open_gguf(
    plan: Plan, files: dict[str, bytes], *, name: str, types: Sequence[str], target: Path, overwrite: bool,
    base_models: Sequence[str] = (), tags: Sequence[str] = (),
) -> GGUFOutput:
    """Lay out the GGUF files of the model `plan` writes (before any weight is read) and open them in staging."""
    from mergehub.gguf.types import require_gguf

    require_gguf()
    from mergehub.gguf.export import plan_gguf
    from mergehub.gguf.metadata import ModelInfo
    from mergehub.gguf.output import GGUFOutput

    gguf_plan: GGUFPlan = plan_gguf(
        plan.config, [(job.name, job.shape) for job in plan.jobs], files, name=name, types=types,
        info=ModelInfo(name, base_models=tuple(base_models), tags=tuple(tags)),
    )
    for warning in gguf_plan.warnings:
        logger.warning("GGUF: %s", warning)
    return GGUFOutput(gguf_plan, target, overwrite=overwrite)


def _gguf_card_maker(
    output: GGUFOutput, repo_id: str, source: str, *, source_on_hub: bool, readme: str | bytes | None, command: str,
    lineage: LineageGraph | None,
) -> Callable[[tuple], ModelCard]:
    from mergehub.gguf.card import gguf_card, render_gguf_card

    arch = output.plan.model.family.arch.name.lower()
    return lambda files: render_gguf_card(gguf_card(
        repo_id, source, source_on_hub=source_on_hub, source_readme=readme, architecture=arch, files=files,
        command=command, lineage=lineage,
    ))


def run_merge(
    recipe: Recipe | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    seed: int = 0,
    out_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
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
    """Plan, then merge tensor by tensor into `out_dir`, which appears only once complete.

    `shard_sink` receives each shard as soon as it is written (the Hub push uploads it then).
    The model card (README.md) names `repo_id` (default: the directory name) and `command` as the way to rerun.
    NaN or Inf values in inputs or outputs are warnings in the summary and recorded in the card; `strict`
    makes them an error, and refuses a recipe with
    warnings (keys or parameters that would be ignored). `overwrite` replaces only a previous merge's directory (see `mergehub.output`).
    With `gguf_types` (`"f16,q8_0"` or a list), the same pass also writes one GGUF file per type into `gguf_dir`
    (default: `{out_dir}-GGUF`), with a card naming `gguf_repo_id` (default: `{repo_id}-GGUF`).

    Raises:
        MergehubError: any problem with the recipe, the models, the merge or the output.
    """
    parsed, text = _recipe_and_text(recipe)
    target = resolve_target(out_dir, overwrite=overwrite, recipe=None if isinstance(recipe, Recipe) else recipe)
    torch_device = resolve_device(device)
    with ExitStack() as stack:
        sources = open_sources(parsed, token=token, cache_dir=cache_dir)
        for source in sources.values():
            stack.callback(source.close)
        prepared = _prepare(parsed, sources, out_shard_bytes, strict)
        plan = prepared.plan
        ordered = list(sources.values())
        staging = create_staging(target)
        stack.callback(shutil.rmtree, staging, ignore_errors=True)
        merged_id = repo_id or target.name
        command = command or f"mergehub merge mergekit_config.yml {target.name} --seed {seed} --out-shard-size {out_shard_bytes}"
        files = artifact_files(plan, ordered, text, tokenizer=prepared.tokenizer, chat_template=prepared.chat_template)
        gguf_output = None
        if gguf_types:
            hub_parents = [m.ref.split("@")[0] for m in plan.models if m.revision]
            gguf_output = _open_gguf(
                plan, files, name=merged_id.split("/")[-1], types=gguf_types, overwrite=overwrite, base_models=hub_parents,
                target=Path(gguf_dir) if gguf_dir else target.with_name(f"{target.name}-GGUF"), tags=("merge", "mergehub"),
            )
            stack.callback(gguf_output.close)
        writer = ShardedWriter(staging, plan.shards, shard_sink)
        sink: TensorSink = FanOutWriter(writer, gguf_output.sink) if gguf_output else writer
        try:
            stats = execute(plan, ordered, sink, device=torch_device, seed=seed, on_progress=on_progress, should_stop=should_stop,
                            strict=strict)
            writer.write_index()
            if shard_sink is not None:
                shard_sink.flush()
        finally:
            writer.close()
        for filename, data in files.items():
            with writing(staging / filename):
                (staging / filename).write_bytes(data)
        written = sorted(files)
        lineage = _lineage(merged_id, sources, text, token)
        card = _model_card(plan, tuple(writer.results), sources, text, seed=seed, repo_id=merged_id, token=token,
                           command=command, lineage=lineage, stats=stats)
        with writing(staging / "README.md"):
            (staging / "README.md").write_text(str(card), encoding="utf-8")
        written.append("README.md")
        gguf_result = None
        if gguf_output is not None:
            types = gguf_output.plan.files
            make_card = _gguf_card_maker(
                gguf_output, gguf_repo_id or f"{merged_id}-GGUF", merged_id, source_on_hub=repo_id is not None,
                readme=str(card), lineage=lineage,
                command=f"{command} --gguf {','.join(f.file_type.lower() for f in types)}",
            )
            gguf_result = gguf_output.finish(gguf_repo_id or f"{merged_id}-GGUF", make_card)
        move_into_place(staging, target)
    shard_names = tuple(shard.filename for shard in writer.results)
    all_files = tuple(sorted(written + list(shard_names) + ["model.safetensors.index.json"]))
    return MergeResult(target, plan, stats, tuple(writer.results), all_files, seed, gguf_result)



def push_merge(
    recipe: Recipe | str | os.PathLike,
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
        result = run_merge(recipe, target, token=token, shard_sink=uploader, repo_id=full_id, gguf_repo_id=gguf_id, **merge_options)
        if eval_tasks:
            try:
                evaluate_merge(result, eval_tasks, token=token, **(eval_options or {}))
            except MergehubError as e:
                logger.warning("Evaluation failed, pushing without scores: %s", e)
        if before_commit is not None:
            before_commit(result)
        commit = commit_merge(api, full_id, result.out_dir, uploader.operations(), result.plan.method, replace_weights=ours)
    except BaseException:
        uploader.close()
        if created:
            try:
                api.delete_repo(full_id, missing_ok=True)
            except Exception as cleanup:  # keep the real error; say what was left behind
                logger.warning("Could not delete %s after the failed merge: %s", full_id, cleanup)
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


def push_gguf_files(result: GGUFResult, *, private: bool = False, force: bool = False, token: str | bool | None = None) -> PushResult:
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
            api.delete_repo(repo_id, missing_ok=True)
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
    parsed = parse_recipe(yaml.safe_dump({"merge_method": "passthrough", "models": [{"model": str(model)}]}))
    with ExitStack() as stack:
        sources = open_sources(parsed, token=token, cache_dir=cache_dir)
        for source in sources.values():
            stack.callback(source.close)
        plan = _prepare(parsed, sources).plan
        ordered = list(sources.values())
        source = ordered[0]
        on_hub = source.revision is not None
        label = getattr(source, "repo_id", None) or Path(model).resolve().name
        name = name or label.split("/")[-1]
        files = artifact_files(plan, ordered, "", tokenizer=None, chat_template=None)
        output = _open_gguf(plan, files, name=name, types=types, target=Path(out_dir), overwrite=overwrite)
        stack.callback(output.close)
        execute(plan, ordered, output.sink, device=resolve_device(device), on_progress=on_progress, should_stop=should_stop)
        readme = source.read_file("README.md")
        lineage_graph = walk_lineage(label, max_depth=LINEAGE_DEPTH, token=token) if on_hub else None
        typed = ",".join(t.lower() for t in parse_types(types))
        make_card = _gguf_card_maker(output, repo_id or f"{label}-GGUF", label, source_on_hub=on_hub, readme=readme,
                                     lineage=lineage_graph, command=f"mergehub gguf {label} {Path(out_dir).name} --types {typed}")
        return output.finish(repo_id or f"{label}-GGUF", make_card)


def _merged_files(target: str, token: str | None) -> tuple[str, tuple[ShardResult, ...], str]:
    """A merged model's recipe text, its shards' checksums, and its name: from a directory or a Hub repo."""
    directory = Path(target)
    if directory.is_dir():
        recipe = directory / RECIPE_FILE
        if not recipe.is_file():
            raise OutputError(f"{directory} has no {RECIPE_FILE}.", hint="Give a directory made by mergehub or mergekit.")
        shards = tuple(
            ShardResult(p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.glob("*.safetensors"))
        )
        return recipe.read_text(encoding="utf-8"), shards, directory.name
    from huggingface_hub import HfApi

    source = open_source(ModelRef.parse(target), token=token)
    text = source.read_file(RECIPE_FILE)
    if text is None:
        raise OutputError(f"{target} has no {RECIPE_FILE}.", hint="Only merges made by mergehub or mergekit can be re-carded.")
    info = HfApi(token=token).model_info(source.repo_id, revision=source.revision, files_metadata=True)
    shards = tuple(
        ShardResult(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else "")
        for s in info.siblings or []
        if s.rfilename.endswith(".safetensors")
    )
    return text.decode("utf-8"), shards, source.repo_id


def build_card(target: str, *, token: str | bool | None = None, seed: int = 0) -> ModelCard:
    """The model card of an existing merge (a directory or a Hub repo), from its mergekit_config.yml."""
    recipe_text, shards, name = _merged_files(target, token)
    parsed = parse_recipe(recipe_text)
    sources = open_sources(parsed, token=token)
    try:
        plan = _prepare(parsed, sources).plan
        command = f"mergehub merge mergekit_config.yml {name.split('/')[-1]} --seed {seed}"
        return _model_card(plan, shards, sources, recipe_text, seed=seed, repo_id=name, command=command, token=token)
    finally:
        for source in sources.values():
            source.close()


def push_card(repo_id: str, card: ModelCard, *, token: str | bool | None = None) -> str:
    """Commit a card as README.md: to main when the token may write there, else as a pull request; returns its URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    who = api.whoami()
    owners = {who["name"], *(org["name"] for org in who.get("orgs", []))}
    own = repo_id.split("/")[0] in owners
    commit = api.create_commit(
        repo_id, [CommitOperationAdd("README.md", str(card).encode())], commit_message="Model card by mergehub",
        create_pr=not own,
    )
    return commit.pr_url or commit.commit_url


def lineage(repo_id: str, *, max_depth: int = 5, token: str | bool | None = None) -> LineageGraph:
    """The ancestry of a Hub model, from its parents' cards and recipes (`token=False`: anonymous)."""
    return walk_lineage(repo_id, max_depth=max_depth, token=token)


def evaluate(model: str | os.PathLike, tasks: Sequence[str], **options: Any) -> EvalReport:
    """Score a model directory or Hub repo with lm-eval (needs `pip install 'mergehub[eval]'`)."""
    from mergehub.evaluation import evaluate as run_evaluation

    return run_evaluation(model, tasks, **options)


def _parent_reports(merged: EvalReport, parents: Sequence[str], tasks: Sequence[str], *, token: str | bool | None, **options: Any) -> dict[str, EvalReport]:
    """Each parent's scores: from its card when it was scored the same way, else evaluated now."""
    from mergehub.evaluation import report_from_card

    reports = {}
    for parent in parents:
        source = open_model(parent, token=token)
        try:
            readme = source.read_file("README.md")
        finally:
            source.close()
        reports[parent] = report_from_card(readme, merged, model=parent) or evaluate(parent, tasks, token=token, **options)
    return reports


def score(
    model: str | os.PathLike, tasks: Sequence[str], *, parents: Sequence[str] = (), token: str | bool | None = None, **options: Any
) -> tuple[EvalReport, str | None]:
    """Score a model, and each parent on the same tasks and settings; returns the report and a comparison table."""
    from mergehub.evaluation import compare

    report = evaluate(model, tasks, token=token, **options)
    if not parents:
        return report, None
    return report, compare(report, _parent_reports(report, parents, tasks, token=token, **options))


def evaluate_merge(
    result: MergeResult, tasks: Sequence[str], *, parents: bool = False, token: str | bool | None = None, **options: Any
) -> tuple[EvalReport, str | None]:
    """Score a fresh merge (and, with `parents`, each parent at its pinned revision) and put the scores in its card."""
    from mergehub.evaluation import add_scores_to_card

    refs = [f"{m.ref.split('@')[0]}@{m.revision}" if m.revision else m.ref for m in result.plan.models] if parents else []
    report, comparison = score(result.out_dir, tasks, parents=refs, token=token, **options)
    card = result.out_dir / "README.md"
    card.write_text(add_scores_to_card(card.read_text(encoding="utf-8"), report, comparison), encoding="utf-8")
    return report, comparison


def card_with_scores(target: str, report: EvalReport, comparison: str | None = None, *, token: str | bool | None = None) -> ModelCard:
    """A model's card (directory or Hub repo) with the report's scores added to its model-index and body."""
    from mergehub.evaluation import add_scores_to_card

    directory = Path(target)
    if directory.is_dir():
        text = (directory / "README.md").read_text(encoding="utf-8") if (directory / "README.md").is_file() else ""
    else:
        source = open_model(target, token=token)
        text = (source.read_file("README.md") or b"").decode("utf-8")
    return ModelCard(add_scores_to_card(text, report, comparison))
