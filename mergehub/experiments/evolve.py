"""`mergehub evolve`: CMA-ES over a mergekit-evolve genome, each generation's candidates merged and scored as in a
sweep.

Fitness is mergekit-evolve's: the sum over `tasks` of weight × the task's metric. CMA-ES (the `cma` package)
minimises, so it is told minus the fitness; a candidate that fails gets a cost one worse than the worst of its
generation. After every generation the search is checkpointed to the output directory::

    checkpoint.pkl      the CMA-ES state and the NumPy random state (`--resume` continues from it)
    evolve.json         the configuration, every generation's best and mean, the best genotype and its fitness
    best.yml            the best genotype so far as a plain recipe: `mergehub merge best.yml OUT` reproduces it
    results.csv/.json   every candidate: genotype, scores with stderr, seconds, status
    evolve.png          best fitness per generation
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergehub import api
from mergehub.errors import ExperimentError, MergehubError, RecipeError
from mergehub.evaluation import EvalReport
from mergehub.experiments.candidate import Candidate, CandidateResult, EvalSettings, RunSettings, memory_needs
from mergehub.experiments.extras import require
from mergehub.experiments.genome import EvolveConfig, Genome
from mergehub.experiments.plots import evolve_plot
from mergehub.experiments.results import Objective, Table, write_atomically
from mergehub.experiments.runner import LocalRunner, Progress, RayRunner

__all__ = ["EvolveOptions", "Evolution", "Generation", "fitness_objective"]

logger = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pkl"
_FAILED_PENALTY = 1.0


@dataclass(frozen=True)
class EvolveOptions:
    """mergekit-evolve's search options: initial step size, evaluation budget, population size, and the seed."""

    sigma0: float = 1 / 6
    max_fevals: int = 100
    popsize: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class Generation:
    """One generation's outcome."""

    generation: int
    evaluations: int
    best: float
    mean: float
    best_so_far: float
    failed: int


def fitness_objective(config: EvolveConfig) -> Objective:
    """mergekit-evolve's fitness as an objective: Σ weight × metric over the configured tasks."""
    return Objective(tuple((task_name(t.name), t.metric.removesuffix(",none"), t.weight) for t in config.tasks))


def task_name(task: str) -> str:
    """The name lm-eval reports a task under: the name itself, or the `task:` of a task YAML file given by path."""
    path = Path(task)
    if not task.endswith((".yaml", ".yml")) or not path.is_file():
        return task

    class _IgnoreTags(yaml.SafeLoader):
        """Reads lm-eval's `!function` tags as plain values."""

    _IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_IgnoreTags)  # noqa: S506 (a SafeLoader subclass)
    return str(data.get("task") or path.stem) if isinstance(data, dict) else path.stem


def _has_chat_template(ref: str) -> bool:
    source = api.open_model(ref)
    try:
        config = json.loads(source.read_file("tokenizer_config.json") or b"{}")
        return bool(config.get("chat_template")) or source.read_file("chat_template.jinja") is not None
    finally:
        source.close()


@dataclass
class Evolution:
    """A CMA-ES search over a genome, checkpointed in `out` after each generation."""

    config: EvolveConfig
    out: Path
    options: EvolveOptions = EvolveOptions()
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        spec = self.config.genome
        source = api.open_model(spec.models[0])
        try:
            self.genome = Genome.for_models(spec, source.config())
        finally:
            source.close()
        chat = self.config.apply_chat_template
        if chat and not _has_chat_template(spec.models[0]):
            self.warnings.append(f"apply_chat_template is ignored: {spec.models[0]} has no chat template.")
            chat = False
        if self.config.shuffle:
            self.warnings.append("shuffle is ignored: every candidate is scored on the same first `limit` documents.")
        self.settings = EvalSettings(
            tuple(dict.fromkeys(t.name for t in self.config.tasks)),
            limit=self.config.limit,
            num_fewshot=self.config.num_fewshot,
            seed=self.options.seed,
            apply_chat_template=chat,
            fewshot_as_multiturn=self.config.fewshot_as_multiturn and chat,
        )
        self.objective = fitness_objective(self.config)
        self.table = Table(("genotype",), self.objective, [])
        self.generations: list[Generation] = []
        self.best: tuple[float, list[float], CandidateResult] | None = None

    # ------------------------------------------------------------------ state

    def _new_strategy(self) -> Any:
        cma = require("cma", "mergehub evolve")
        import numpy as np

        rng = np.random.default_rng(self.options.seed) if self.config.random_init else None
        x0 = self.genome.initial(rng)
        options: dict[str, Any] = {"maxfevals": self.options.max_fevals, "seed": self.options.seed + 1, "verbose": -9}
        if self.options.popsize:
            options["popsize"] = self.options.popsize
        return cma.CMAEvolutionStrategy(x0, self.options.sigma0, options)

    def _save(self, strategy: Any) -> None:
        import numpy as np

        state = {
            "strategy": strategy,
            "numpy": np.random.get_state(),
            "generations": self.generations,
            "best": self.best,
            "results": self.table.results,
        }
        write_atomically(self.out / CHECKPOINT, pickle.dumps(state))
        write_atomically(self.out / "evolve.json", json.dumps(self._record(), indent=1))
        write_atomically(self.out / "results.json", self.table.to_json(config=self.config.model_dump(mode="json")))
        write_atomically(self.out / "results.csv", self.table.to_csv())
        if self.best is not None:
            write_atomically(self.out / "best.yml", self.genome.recipe_yaml(self.best[1]))
        if self.generations:
            evolve_plot([g.__dict__ for g in self.generations], self.out / "evolve.png")

    def _load(self) -> Any:
        import numpy as np

        try:
            state = pickle.loads((self.out / CHECKPOINT).read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as e:
            raise ExperimentError(
                f"Cannot resume: {self.out / CHECKPOINT} is missing or unreadable ({e}).",
                hint="Start without --resume, or point --out at the search's directory.",
            ) from e
        np.random.set_state(state["numpy"])
        self.generations, self.best, self.table.results = state["generations"], state["best"], state["results"]
        return state["strategy"]

    def _record(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "options": self.options.__dict__,
            "genome_shape": list(self.genome.shape),
            "objective": self.objective.describe(),
            "warnings": self.warnings,
            "generations": [g.__dict__ for g in self.generations],
            "best_fitness": self.best[0] if self.best else None,
            "best_genotype": self.best[1] if self.best else None,
            "best_candidate": self.best[2].candidate.name if self.best else None,
        }

    @property
    def best_report(self) -> EvalReport | None:
        """The scores of the best candidate so far."""
        return self.best[2].report if self.best else None

    # ------------------------------------------------------------------ search

    def _why(self, result: CandidateResult) -> str:
        """Why a candidate has no fitness: its error, or the objective's complaint about its scores."""
        if not result.ok or result.report is None:
            return (result.error or "failed").strip().splitlines()[0]
        try:
            self.objective.score(result.report)
        except RecipeError as e:
            return e.message
        return "no fitness"

    def _candidates(self, genotypes: list[list[float]], generation: int, first_index: int) -> list[Candidate]:
        recipes = [self.genome.recipe_yaml(x) for x in genotypes]
        plans = api.plan_merges([api.parse_recipe(text) for text in recipes])
        return [
            Candidate(
                first_index + i,
                f"g{generation:03d}-{i:02d}",
                (("genotype", [round(v, 6) for v in x]),),
                recipe_yaml=text,
                needs=memory_needs(plan),
            )
            for i, (x, text, plan) in enumerate(zip(genotypes, recipes, plans))
        ]

    def run(
        self,
        *,
        runner: RayRunner | LocalRunner,
        run: RunSettings = RunSettings(),
        resume: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Iterator[Generation]:
        """Run generations until CMA-ES stops or `max_fevals` evaluations are done, yielding each; checkpointed after
        each.

        A generation is never cut short, so the last one may take the count past `max_fevals`.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        if not resume and (self.out / CHECKPOINT).exists():
            raise ExperimentError(
                f"{self.out} already holds a search.", hint="Pass --resume to continue it, or choose another --out."
            )
        strategy = self._load() if resume else self._new_strategy()
        strategy.opts["maxfevals"] = self.options.max_fevals  # a resumed search may be given a larger budget
        for warning in self.warnings:
            logger.warning(warning)
        while not strategy.stop() and strategy.countevals < self.options.max_fevals:
            genotypes = [list(map(float, x)) for x in strategy.ask()]
            number = len(self.generations)
            try:
                candidates = self._candidates(genotypes, number, len(self.table.results))
            except MergehubError as e:
                raise RecipeError(
                    f"Generation {number}: a genotype decodes to a recipe that cannot be planned: {e.message}",
                    hint=e.hint,
                ) from e
            results = {r.candidate.index: r for r in runner.run(candidates, self.settings, run, on_progress)}
            ordered = [results[c.index] for c in candidates]
            self.table.results += ordered
            scores = [self.table.score(r) for r in ordered]
            good = [s for s in scores if s is not None]
            if not good:
                self._save(strategy)
                errors = "; ".join(sorted({self._why(r) for r in ordered}))
                raise ExperimentError(
                    f"Every candidate of generation {number} failed: {errors}",
                    hint="Fix the cause; --resume continues.",
                )
            worst = min(good) - _FAILED_PENALTY
            strategy.tell(genotypes, [-(s if s is not None else worst) for s in scores])
            k = max(range(len(scores)), key=lambda i: -1e300 if scores[i] is None else scores[i])
            if self.best is None or good and max(good) > self.best[0]:
                self.best = (max(good), genotypes[k], ordered[k])
            self.generations.append(
                Generation(
                    number, strategy.countevals, max(good), sum(good) / len(good), self.best[0], len(scores) - len(good)
                )
            )
            self._save(strategy)
            yield self.generations[-1]
