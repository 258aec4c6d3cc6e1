"""The public surface of mergehub: load a recipe, plan a merge, run it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import yaml

from mergehub.artifacts import check_chat_template, write_artifacts
from mergehub.errors import OutputError
from mergehub.executor import DEFAULT_PREFETCH_BYTES, ExecutionStats, Progress, execute, resolve_device
from mergehub.plan import DEFAULT_SHARD_BYTES, Plan
from mergehub.plan import plan_merge as _plan_merge
from mergehub.recipe import ModelRef, Recipe, load_recipe, parse_recipe
from mergehub.sources import TensorSource, open_source
from mergehub.writer import ShardedWriter, ShardResult

__all__ = ["MergeResult", "load_recipe", "parse_recipe", "open_sources", "plan_merge", "run_merge"]


@dataclass(frozen=True)
class MergeResult:
    """A finished merge: where it is, what was planned, and what it took."""

    out_dir: Path
    plan: Plan
    stats: ExecutionStats
    shards: tuple[ShardResult, ...]
    files: tuple[str, ...]
    seed: int

    def summary(self) -> str:
        """One line of figures, then each shard's sha256."""
        s = self.stats
        rate = (s.bytes_read + s.bytes_written) / max(s.seconds, 1e-9) / 1e9
        lines = [
            f"Merged {len(self.plan.jobs)} tensors in {s.seconds:.1f} s: read {s.bytes_read / 1e9:.2f} GB, "
            f"wrote {s.bytes_written / 1e9:.2f} GB ({rate:.2f} GB/s), peak RSS {s.peak_rss_bytes / 2**30:.2f} GiB -> {self.out_dir}"
        ]
        lines += [f"  sha256 {shard.sha256}  {shard.filename}" for shard in self.shards]
        return "\n".join(lines)


def _recipe_and_text(recipe: Recipe | str | os.PathLike) -> tuple[Recipe, str]:
    """The recipe and its YAML text (the file's own text, so comments survive in mergekit_config.yml)."""
    if isinstance(recipe, Recipe):
        return recipe, yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
    parsed = load_recipe(recipe)
    return parsed, Path(recipe).read_text(encoding="utf-8")


def open_sources(recipe: Recipe, *, token: str | None = None, cache_dir: str | os.PathLike | None = None) -> dict[ModelRef, TensorSource]:
    """Open every model the recipe references, base first; Hub references resolve to a commit."""
    return {ref: open_source(ref, token=token, cache_dir=cache_dir) for ref in recipe.referenced_models()}


def plan_merge(
    recipe: Recipe | str | os.PathLike, *, out_shard_bytes: int = DEFAULT_SHARD_BYTES, token: str | None = None
) -> Plan:
    """Plan a merge from configs and headers only: the `--dry-run`."""
    parsed, _ = _recipe_and_text(recipe)
    check_chat_template(parsed.chat_template)
    sources = open_sources(parsed, token=token)
    try:
        return _plan_merge(parsed, sources, out_shard_bytes=out_shard_bytes, prefetch_bytes=DEFAULT_PREFETCH_BYTES)
    finally:
        for source in sources.values():
            source.close()


def _prepare_output(out_dir: Path, overwrite: bool) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"Output path {out_dir} exists and is not a directory.", hint="Choose another output path.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputError(f"Output directory {out_dir} is not empty.", hint="Choose a new directory, or pass --overwrite.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging


def run_merge(
    recipe: Recipe | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    seed: int = 0,
    out_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MergeResult:
    """Plan, then merge tensor by tensor into `out_dir`, which appears only once complete.

    Raises:
        MergehubError: any problem with the recipe, the models, the merge or the output.
    """
    parsed, text = _recipe_and_text(recipe)
    check_chat_template(parsed.chat_template)
    target = Path(out_dir)
    torch_device = resolve_device(device)
    with ExitStack() as stack:
        sources = open_sources(parsed, token=token, cache_dir=cache_dir)
        for source in sources.values():
            stack.callback(source.close)
        plan = _plan_merge(parsed, sources, out_shard_bytes=out_shard_bytes, prefetch_bytes=DEFAULT_PREFETCH_BYTES)
        ordered = list(sources.values())
        staging = _prepare_output(target, overwrite)
        stack.callback(shutil.rmtree, staging, ignore_errors=True)
        writer = ShardedWriter(staging, plan.shards)
        try:
            stats = execute(plan, ordered, writer, device=torch_device, seed=seed, on_progress=on_progress, should_stop=should_stop)
            writer.write_index()
        finally:
            writer.close()
        files = write_artifacts(staging, plan, ordered, text, parsed.chat_template)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    shard_names = tuple(shard.filename for shard in writer.results)
    return MergeResult(target, plan, stats, tuple(writer.results), tuple(sorted(files + list(shard_names) + ["model.safetensors.index.json"])), seed)

