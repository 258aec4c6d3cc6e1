"""A parameter sweep: every variant of a recipe planned first, then merged and scored as candidates, with the
table, summary and plots rewritten in the output directory as each candidate finishes.

Layout of the output directory::

    recipe.yml              the recipe the variants start from
    variants/v000.yml ...   each variant as a plain recipe (`mergehub merge variants/v003.yml out` reproduces it)
    results.json            settings, and every candidate with its scores or its error
    results.csv             one row per candidate: values, metric and stderr columns, objective, seconds, status
    summary.md              the table in Markdown, with the best variant and the plots
    sweep-*.png             a plot per varied path, and sweep-heatmap.png for two
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergehub import api, safe_yaml
from mergehub.errors import MergehubError, RecipeError
from mergehub.experiments.candidate import (
    Candidate,
    CandidateResult,
    EvalSettings,
    MemoryNeeds,
    RunSettings,
    memory_needs,
)
from mergehub.experiments.plots import sweep_plots
from mergehub.experiments.results import Objective, Table, write_atomically
from mergehub.experiments.runner import LocalRunner, Progress, RayRunner, Resources
from mergehub.experiments.variants import Variant, Vary, apply_variant, grid, parse_vary, sample
from mergehub.recipe import Recipe

__all__ = ["Sweep", "prepare_sweep", "run_sweep", "PLOT_SECONDS"]

PLOT_SECONDS = 10.0
"""How often plots are redrawn while a sweep runs (tables are rewritten after every candidate)."""


@dataclass
class Sweep:
    """A planned sweep: its variants (each checked against the models), the candidates to run, and results so far."""

    recipe_text: str
    varies: tuple[Vary, ...]
    variants: tuple[Variant, ...]
    recipes: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    settings: EvalSettings
    objective: Objective
    sampled: bool
    warnings: tuple[str, ...] = ()
    table: Table = field(init=False)
    plots: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.table = Table(tuple(v.path for v in self.varies), self.objective, [])

    def describe(self) -> str:
        """What `--dry-run` prints: each variant and what it needs, then what the recipe sets that is ignored."""
        lines = [
            f"Sweep of {len(self.variants)} variant(s) over {', '.join(v.path for v in self.varies)}; tasks "
            f"{', '.join(self.settings.tasks)}"
        ]
        for candidate in self.candidates:
            if candidate.is_parent:
                lines.append(f"  parent {candidate.model}")
            else:
                needs = candidate.needs
                memory = (
                    f"  (memory: {needs.in_memory / 2**30:.2f} GiB in memory, {needs.on_disk / 2**30:.2f} GiB via disk)"
                    if needs
                    else ""
                )
                lines.append(f"  {candidate.name}  {Variant(candidate.index, candidate.values).label}{memory}")
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def write(self, out: Path, *, plots: bool = True) -> list[Path]:
        """Write (or rewrite) the results files into `out`, and the plots unless `plots` is false; returns the plots'
        paths."""
        out.mkdir(parents=True, exist_ok=True)
        metadata = {"tasks": list(self.settings.tasks), "eval": self.settings.options(), "sampled": self.sampled}
        write_atomically(out / "results.json", self.table.to_json(**metadata))
        write_atomically(out / "results.csv", self.table.to_csv())
        if plots and self.table.variants():
            self.plots = [p.name for p in sweep_plots(self.table, self.varies, out, sampled=self.sampled)]
        write_atomically(out / "summary.md", self.summary(self.plots))
        return [out / name for name in self.plots]

    def summary(self, plots: Sequence[str] = ()) -> str:
        """The Markdown summary: what was varied and scored, the best variant, the table, the plots."""
        table = self.table
        best = table.best()
        variants = table.variants()
        failed = sum(not r.ok for r in table.results)
        report = next((r.report for r in table.results if r.report), None)
        limit = f", limit {self.settings.limit:g}" if self.settings.limit is not None else ""
        lines = [
            "# Sweep",
            "",
            f"{len(variants)} of {sum(not c.is_parent for c in self.candidates)} variants done ({failed} failed), "
            f"varying {', '.join(f'`{v.path}`' for v in self.varies)}; scored with lm-eval on "
            f"{', '.join(self.settings.tasks)}{limit}.",
            f"Objective: {self.objective.describe(report)}.",
            "",
        ]
        if best is not None:
            lines += [
                f"Best: **{best.candidate.name}** ({Variant(best.candidate.index, best.candidate.values).label}), "
                f"objective {table.score(best):.4f}: `variants/{best.candidate.name}.yml`.",
                "",
            ]
        lines += [table.markdown(), ""]
        lines += [f"![{name}]({name})" for name in plots]
        return "\n".join(lines) + "\n"

    def run(
        self,
        out: str | os.PathLike,
        *,
        runner: RayRunner | LocalRunner,
        run: RunSettings = RunSettings(),
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Iterator[CandidateResult]:
        """Run every candidate, yielding each result as it finishes, after rewriting the results files.

        The plots are redrawn at most every `PLOT_SECONDS`, and once at the end. On an interruption
        (Ctrl-C) or an early stop, what finished is written.
        """
        target = Path(out)
        self.write_inputs(target)
        drawn = time.monotonic()
        try:
            for result in runner.run(self.candidates, self.settings, run, on_progress):
                self.table.results.append(result)
                self.table.results.sort(key=lambda r: (not r.candidate.is_parent, r.candidate.index))
                plots = time.monotonic() - drawn >= PLOT_SECONDS
                self.write(target, plots=plots)
                drawn = time.monotonic() if plots else drawn
                yield result
        finally:
            self.write(target)

    def write_inputs(self, out: Path) -> None:
        """The base recipe and each variant's recipe, written before anything runs."""
        (out / "variants").mkdir(parents=True, exist_ok=True)
        write_atomically(out / "recipe.yml", self.recipe_text)
        for variant, text in zip(self.variants, self.recipes):
            write_atomically(out / "variants" / f"{variant.name}.yml", text)


def _pinned(plan: api.Plan) -> dict[str, str]:
    """Each Hub model (and Hub LoRA adapter) of the plan, by the reference the recipe writes, pinned to the commits
    the plan resolved."""
    return {
        model.ref: str(model.pinned)
        for model in plan.models
        if model.revision or (model.adapter and model.adapter.revision)
    }


def _pin_text(text: str, pins: dict[str, str]) -> str:
    """The recipe YAML with Hub references pinned, so every candidate reads the same bytes."""

    def pin(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (pins.get(v, v) if k in ("model", "base_model") and isinstance(v, str) else pin(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [pin(v) for v in value]
        return value

    return yaml.safe_dump(pin(safe_yaml.load(text)), sort_keys=False) if pins else text


def prepare_sweep(
    recipe: str | os.PathLike,
    vary: Sequence[str | Vary],
    tasks: Sequence[str],
    *,
    limit: float | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 8,
    samples: int | None = None,
    seed: int = 0,
    eval_parents: bool = False,
    objective: Sequence[str] = (),
    token: str | None = None,
) -> Sweep:
    """Expand and plan every variant of a recipe file (configs and headers only, as `--dry-run`).

    Raises:
        RecipeError: a --vary is malformed or a variant is not a valid recipe (named in the message).
        MergehubError: a variant cannot be planned against the models (named in the message).
    """
    text = safe_yaml.read_text(recipe)
    api.parse_recipe(text)
    if not tasks:
        raise RecipeError(
            "A sweep needs tasks to score the variants.", hint="Add --eval TASKS, e.g. --eval mergehub_facts."
        )
    varies = tuple(v if isinstance(v, Vary) else parse_vary(v) for v in vary)
    variants = sample(varies, samples, seed) if samples else grid(varies)
    applied = [apply_variant(text, variant) for variant in variants]
    try:
        plans = api.plan_merges([recipe for recipe, _ in applied], token=token)
    except MergehubError as e:
        bad = _first_unplannable(applied, variants, token)
        headline = f"Variant {bad.name} ({bad.label}): {e.headline}" if bad else e.headline
        raise type(e)(headline, hint=e.hint, location=e.location, problems=e.problems, remedy=e.remedy) from e
    texts = []
    for (_, variant_text), plan in zip(applied, plans):
        texts.append(_pin_text(variant_text, _pinned(plan)))
    candidates: list[Candidate] = []
    parents: list[str] = []
    if eval_parents:
        refs: dict[str, None] = {}
        for plan in plans:
            for model in plan.models:
                refs.setdefault(str(model.pinned), None)
        parents = list(refs)
    needs = [memory_needs(plan) for plan in plans]
    largest = max((n.on_disk for n in needs), default=0)
    for k, parent in enumerate(parents):
        candidates.append(
            Candidate(-len(parents) + k, f"parent-{k}", model=parent, needs=MemoryNeeds(largest, largest))
        )
    for variant, variant_text, need in zip(variants, texts, needs):
        candidates.append(Candidate(variant.index, variant.name, variant.values, recipe_yaml=variant_text, needs=need))
    settings = EvalSettings(tuple(tasks), limit=limit, num_fewshot=num_fewshot, batch_size=batch_size, seed=seed)
    warnings = tuple(
        dict.fromkeys(str(w) for plan in plans for w in plan.warnings)
    )  # what the variants set that is ignored
    return Sweep(
        text,
        varies,
        tuple(variants),
        tuple(texts),
        tuple(candidates),
        settings,
        Objective.parse(objective),
        bool(samples),
        warnings,
    )


def _first_unplannable(applied: list[tuple[Recipe, str]], variants: list[Variant], token: str | None) -> Variant | None:
    """The first variant whose plan fails, to name it in the error."""
    for (parsed, _), variant in zip(applied, variants):
        try:
            api.plan_merges([parsed], token=token)
        except MergehubError:
            return variant
    return None


def run_sweep(
    recipe: str | os.PathLike,
    vary: Sequence[str | Vary],
    tasks: Sequence[str],
    out: str | os.PathLike,
    *,
    ray_address: str | None = None,
    use_ray: bool = True,
    resources: Resources | None = None,
    retries: int = 3,
    run: RunSettings = RunSettings(),
    on_progress: Callable[[Progress], None] | None = None,
    **options: Any,
) -> Iterator[tuple[CandidateResult, Sweep]]:
    """Plan a sweep, then run it; yields each finished candidate with the sweep (its `table` updated, files rewritten).

    `options` are those of `prepare_sweep` (limit, num_fewshot, samples, seed, eval_parents, objective, token).
    Without Ray (`use_ray=False`) the candidates run one after another in this process.
    For the Space: iterate, and after each result show `sweep.table.markdown()` and the PNGs in `out`.
    """
    sweep = prepare_sweep(recipe, vary, tasks, **options)
    if not use_ray:
        for result in sweep.run(out, runner=LocalRunner(), run=run, on_progress=on_progress):
            yield result, sweep
        return
    with RayRunner(ray_address, resources=resources or Resources(), retries=retries) as runner:
        for result in sweep.run(out, runner=runner, run=run, on_progress=on_progress):
            yield result, sweep
