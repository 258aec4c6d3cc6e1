"""PNG plots of an experiment with matplotlib (Agg, no display): a line per varied parameter, a heatmap for two,
and the best fitness per generation of a search."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mergehub.experiments.extras import require
from mergehub.experiments.results import Table, model_label
from mergehub.experiments.variants import Vary, format_value

__all__ = ["sweep_plots", "evolve_plot", "plot_name"]


def _pyplot() -> Any:
    require("matplotlib", "Plotting results").use("Agg", force=True)  # files only, no display
    return require("matplotlib.pyplot", "Plotting results")


def plot_name(path: str) -> str:
    """The file name of the plot of one varied path: `sweep-models-1-parameters-weight.png`."""
    return "sweep-" + re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-") + ".png"


def _positions(vary: Vary) -> tuple[list[Any], list[str]]:
    """The x position of each of a parameter's values and their tick labels (categorical values are evenly spaced)."""
    if vary.numeric:
        return list(vary.values), [format_value(v) for v in vary.values]
    return list(range(len(vary.values))), [format_value(v) for v in vary.values]


def _key(value: Any) -> str:
    return format_value(value)


def _parent_lines(ax: Any, table: Table) -> None:
    for k, parent in enumerate(table.parents()):
        score = table.score(parent)
        if score is not None:
            ax.axhline(
                score,
                color="0.5",
                linestyle=("--", ":", "-.")[k % 3],
                linewidth=1,
                label=f"parent {model_label(parent.candidate.model or '')}",
            )


def _line_plot(plt: Any, table: Table, vary: Vary, sampled: bool, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    results = [r for r in table.variants() if table.score(r) is not None]
    if sampled:
        xs = [dict(r.candidate.values)[vary.path] for r in results]
        if not vary.numeric:
            order = {_key(v): i for i, v in enumerate(vary.values)}
            xs = [order[_key(x)] for x in xs]
        ax.scatter(xs, [table.score(r) for r in results], color="C0", label="objective")
        ax.set_title(f"Objective of {len(results)} random samples")
    else:
        positions, _ = _positions(vary)
        groups = {
            _key(v): [r for r in results if _key(dict(r.candidate.values)[vary.path]) == _key(v)] for v in vary.values
        }
        several = len(table.paths) > 1
        metrics = table.metrics()
        for k, (task, metric) in enumerate(metrics if len(metrics) > 1 else []):
            ys, errs = [], []
            for value in vary.values:
                found = [
                    r.report.get(task, metric) for r in groups[_key(value)] if r.report and r.report.get(task, metric)
                ]
                ys.append(sum(f.value for f in found) / len(found) if found else float("nan"))
                errs.append(found[0].stderr if len(found) == 1 and found[0].stderr is not None else 0.0)
            ax.errorbar(
                positions,
                ys,
                yerr=None if several else errs,
                marker="o",
                color=f"C{k + 1}",
                alpha=0.6,
                capsize=3,
                label=f"{task}/{metric}",
            )
        objective = [
            sum(table.score(r) for r in groups[_key(v)]) / len(groups[_key(v)]) if groups[_key(v)] else float("nan")
            for v in vary.values
        ]
        ax.plot(
            positions,
            objective,
            marker="o",
            color="black",
            linewidth=2,
            label="objective" + (" (mean over the other parameters)" if several else ""),
        )
        ax.set_title(f"{len(results)} variants")
    _parent_lines(ax, table)
    if not vary.numeric:
        ax.set_xticks(*_positions(vary))
    ax.set_xlabel(vary.path)
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    target = out / plot_name(vary.path)
    fig.savefig(target)
    plt.close(fig)
    return target


def _heatmap(plt: Any, table: Table, rows: Vary, cols: Vary, out: Path) -> Path:
    scores = {}
    for result in table.variants():
        values = dict(result.candidate.values)
        scores[(_key(values[rows.path]), _key(values[cols.path]))] = table.score(result)
    grid = [[scores.get((_key(r), _key(c))) for c in cols.values] for r in rows.values]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols.values), 1.2 + 0.6 * len(rows.values)), dpi=110)
    image = ax.imshow([[float("nan") if v is None else v for v in row] for row in grid], cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(
                j, i, "failed" if value is None else f"{value:.3f}", ha="center", va="center", fontsize=7, color="white"
            )
    ax.set_xticks(range(len(cols.values)), [format_value(v) for v in cols.values])
    ax.set_yticks(range(len(rows.values)), [format_value(v) for v in rows.values])
    ax.set_xlabel(cols.path)
    ax.set_ylabel(rows.path)
    ax.set_title("objective")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    target = out / "sweep-heatmap.png"
    fig.savefig(target)
    plt.close(fig)
    return target


def sweep_plots(table: Table, varies: Sequence[Vary], out: Path, *, sampled: bool = False) -> list[Path]:
    """Draw the sweep's plots into `out`: one per varied path, and a heatmap of the objective when two paths make a
    grid.

    Raises:
        ExperimentError: matplotlib is not installed.
    """
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = [_line_plot(plt, table, vary, sampled, out) for vary in varies]
    if len(varies) == 2 and not sampled:
        paths.append(_heatmap(plt, table, varies[0], varies[1], out))
    return paths


def evolve_plot(generations: Sequence[dict[str, Any]], target: Path) -> Path:
    """Best fitness so far, and the best and mean of each generation, against the generation number."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    numbers = [g["generation"] for g in generations]
    ax.plot(
        numbers, [g["best_so_far"] for g in generations], marker="o", color="black", linewidth=2, label="best so far"
    )
    ax.plot(numbers, [g["best"] for g in generations], marker=".", color="C0", alpha=0.7, label="generation best")
    ax.plot(numbers, [g["mean"] for g in generations], marker=".", color="C1", alpha=0.7, label="generation mean")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
    return target
