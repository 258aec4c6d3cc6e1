"""An experiment's results: the objective that ranks candidates, and the table as CSV, JSON and Markdown."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergehub.errors import RecipeError
from mergehub.evaluation import EvalReport
from mergehub.experiments.candidate import CandidateResult
from mergehub.experiments.variants import format_value

__all__ = ["Objective", "Table", "write_atomically", "model_label"]


def model_label(ref: str) -> str:
    """A parent as tables and legends show it: `org/name` without its pinned commit, a local directory by its name;
    `model+adapter` as both, each so."""
    if "+" in ref and not Path(ref).exists():
        return "+".join(model_label(part) for part in ref.split("+"))
    path = ref.split("@")[0] if "@" in ref and not Path(ref).exists() else ref
    return Path(path).name if path.startswith(("/", ".", "~")) else path


def _metric_key(metric: str) -> str:
    """lm-eval's `acc,none` is mergehub's `acc`; a metric with another filter keeps it (`exact_match,strict-match`)."""
    return metric.removesuffix(",none")


@dataclass(frozen=True)
class Objective:
    """What ranks candidates: a weighted sum of task metrics (mergekit-evolve's fitness), or by default the mean
    of each task's first metric."""

    terms: tuple[tuple[str, str, float], ...] = ()

    @classmethod
    def parse(cls, specs: Sequence[str]) -> Objective:
        """Parse `TASK/METRIC[=WEIGHT]` entries (`mergehub_facts/acc`, `mergehub_arithmetic/exact_match=2`).

        Raises:
            RecipeError: an entry is malformed.
        """
        terms = []
        for spec in specs:
            target, _, weight = spec.partition("=")
            task, _, metric = target.partition("/")
            try:
                value = float(weight) if weight else 1.0
            except ValueError:
                value = None
            if not task.strip() or not metric.strip() or value is None:
                raise RecipeError(
                    f"--objective {spec!r} is not TASK/METRIC[=WEIGHT].",
                    hint="For example: --objective mergehub_facts/acc",
                )
            terms.append((task.strip(), _metric_key(metric.strip()), value))
        return cls(tuple(terms))

    def resolved(self, report: EvalReport) -> tuple[tuple[str, str, float], ...]:
        """The terms, or by default each task's first metric weighted 1/number of tasks."""
        if self.terms:
            return self.terms
        tasks = report.tasks()
        firsts = [next(r for r in report.results if r.task == task) for task in tasks]
        return tuple(
            (s.task, s.metric, (1.0 if s.higher_is_better is not False else -1.0) / len(tasks)) for s in firsts
        )

    def score(self, report: EvalReport) -> float:
        """The weighted sum of the report's metrics.

        Raises:
            RecipeError: a term names a task or metric the report lacks (the message lists those it has).
        """
        total = 0.0
        for task, metric, weight in self.resolved(report):
            found = report.get(task, metric)
            if found is None:
                have = ", ".join(f"{r.task}/{r.metric}" for r in report.results)
                raise RecipeError(
                    f"The objective names {task}/{metric}, which the scores lack.", hint=f"Scored: {have}."
                )
            total += weight * found.value
        return total

    def describe(self, report: EvalReport | None = None) -> str:
        """`0.5 × mergehub_facts/acc + 0.5 × mergehub_arithmetic/exact_match`."""
        terms = self.resolved(report) if report is not None else self.terms
        return (
            " + ".join(f"{weight:g} × {task}/{metric}" for task, metric, weight in terms)
            or "mean of each task's first metric"
        )


def write_atomically(path: Path, data: str | bytes) -> None:
    """Replace a results file in one step, so a reader (or a crash) never sees half of it."""
    partial = path.with_name(f".{path.name}.partial")
    if isinstance(data, str):
        partial.write_text(data, encoding="utf-8")
    else:
        partial.write_bytes(data)
    os.replace(partial, path)


@dataclass
class Table:
    """The results of an experiment so far, in candidate order, with the varied paths as columns."""

    paths: tuple[str, ...]
    objective: Objective
    results: list[CandidateResult]

    def score(self, result: CandidateResult) -> float | None:
        """A finished candidate's objective; None for a failed one (or when the objective does not apply)."""
        if not result.ok or result.report is None:
            return None
        try:
            return self.objective.score(result.report)
        except RecipeError:
            return None

    def metrics(self) -> list[tuple[str, str]]:
        """Every (task, metric) scored by some candidate, in first-seen order."""
        seen: dict[tuple[str, str], None] = {}
        for result in self.results:
            for score in result.report.results if result.report else ():
                seen.setdefault((score.task, score.metric), None)
        return list(seen)

    def variants(self) -> list[CandidateResult]:
        """The merged candidates (not the parents)."""
        return [r for r in self.results if not r.candidate.is_parent]

    def parents(self) -> list[CandidateResult]:
        """The parents scored for reference."""
        return [r for r in self.results if r.candidate.is_parent]

    def best(self) -> CandidateResult | None:
        """The merged candidate with the highest objective; the first one on ties; None when none succeeded."""
        scored = [(self.score(r), -r.candidate.index, r) for r in self.variants()]
        scored = [s for s in scored if s[0] is not None]
        return max(scored, key=lambda s: (s[0], s[1]))[2] if scored else None

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per candidate: its values, every metric with its stderr, the objective, seconds and status."""
        rows = []
        for result in sorted(self.results, key=lambda r: (not r.candidate.is_parent, r.candidate.index)):
            values = dict(result.candidate.values)
            row: dict[str, Any] = {
                "candidate": result.candidate.name,
                "kind": "parent" if result.candidate.is_parent else "variant",
            }
            row["model"] = result.candidate.model or ""
            for path in self.paths:
                row[path] = values.get(path, "")
            for task, metric in self.metrics():
                found = result.report.get(task, metric) if result.report else None
                row[f"{task}/{metric}"] = found.value if found else None
                row[f"{task}/{metric} stderr"] = found.stderr if found else None
            row["objective"] = self.score(result)
            row["merge_seconds"] = round(result.merge_seconds, 3)
            row["eval_seconds"] = round(result.eval_seconds, 3)
            row["mode"] = result.mode or ""
            row["node"] = result.node
            row["attempts"] = result.attempts
            row["status"] = result.status
            row["error"] = (result.error or "").splitlines()[0] if result.error else ""
            rows.append(row)
        return rows

    def to_csv(self) -> str:
        """The rows as CSV (values of lists written as YAML flow lists)."""
        rows = self.rows()
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {k: format_value(v) if isinstance(v, list) else ("" if v is None else v) for k, v in row.items()}
                )
        return out.getvalue()

    def to_json(self, **metadata: Any) -> str:
        """The full results (every candidate with its report and error) and the experiment's settings."""
        best = self.best()
        return json.dumps(
            {
                **metadata,
                "varied": list(self.paths),
                "objective": self.objective.describe(next((r.report for r in self.results if r.report), None)),
                "best": best.candidate.name if best else None,
                "candidates": [r.to_dict() for r in self.results],
            },
            indent=1,
        )

    def markdown(self) -> str:
        """The table in Markdown: parents first, the best variant starred; metrics with ± stderr."""
        metrics = self.metrics()
        best = self.best()
        header = [
            "Candidate",
            *self.paths,
            *(f"{t}/{m}" for t, m in metrics),
            "Objective",
            "Merge s",
            "Eval s",
            "Status",
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for result in sorted(self.results, key=lambda r: (not r.candidate.is_parent, r.candidate.index)):
            values = dict(result.candidate.values)
            name = model_label(result.candidate.model or "") if result.candidate.is_parent else result.candidate.name
            name = f"**{name}** ★" if result is best else name
            cells = [f"`{name}`" if result.candidate.is_parent else name]
            cells += [format_value(values[p]) if p in values else "" for p in self.paths]
            for task, metric in metrics:
                found = result.report.get(task, metric) if result.report else None
                cells.append(
                    ""
                    if found is None
                    else f"{found.value:.4f}" + (f" ± {found.stderr:.4f}" if found.stderr is not None else "")
                )
            score = self.score(result)
            cells.append("" if score is None else f"{score:.4f}")
            cells += [f"{result.merge_seconds:.1f}", f"{result.eval_seconds:.1f}"]
            cells.append(result.status if result.ok else f"failed: {(result.error or '').splitlines()[0][:80]}")
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)
