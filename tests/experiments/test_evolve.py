"""mergehub.experiments.evolve: CMA-ES over a genome, checkpointed each generation, resumed, its best a plain recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mergehub import api
from mergehub.errors import ExperimentError
from mergehub.experiments import LocalRunner
from mergehub.experiments.evolve import Evolution, EvolveOptions
from mergehub.experiments.genome import load_evolve_config
from mergehub.interfaces.cli import main

pytest.importorskip("cma")
pytest.importorskip("lm_eval")


@pytest.fixture
def evolve_config(scored_family: list[Path], perplexity_task: str, tmp_path: Path) -> Path:
    """A linear genome of two fine-tunes per half of the layers, scored by (minus) bits per byte of the tiny task."""
    path = tmp_path / "evolve.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "genome": {
                    "models": [str(scored_family[1]), str(scored_family[2])],
                    "merge_method": "linear",
                    "layer_granularity": 2,
                },
                "tasks": [{"name": "tiny_perplexity", "metric": "bits_per_byte,none", "weight": -1.0}],
                "limit": 2,
            }
        )
    )
    return path


def _evolution(config: Path, out: Path, fevals: int) -> Evolution:
    return Evolution(load_evolve_config(config), out, EvolveOptions(max_fevals=fevals, popsize=4, seed=3, sigma0=0.2))


def _tasks_from(config: Path, task: str) -> None:
    data = yaml.safe_load(config.read_text())
    data["tasks"][0]["name"] = task
    config.write_text(yaml.safe_dump(data))


def test_search_checkpoints_each_generation_and_resumes_exactly(
    evolve_config: Path, perplexity_task: str, tmp_path: Path
):
    _tasks_from(evolve_config, perplexity_task)
    whole = _evolution(evolve_config, tmp_path / "whole", 8)
    assert whole.warnings == [
        "apply_chat_template is ignored: "
        + yaml.safe_load(evolve_config.read_text())["genome"]["models"][0]
        + " has no chat template."
    ]
    generations = list(whole.run(runner=LocalRunner()))
    assert [g.generation for g in generations] == [0, 1] and generations[-1].evaluations == 8
    assert generations[1].best_so_far == max(g.best for g in generations)
    out = tmp_path / "whole"
    assert {"checkpoint.pkl", "evolve.json", "best.yml", "results.csv", "results.json", "evolve.png"} <= {
        p.name for p in out.iterdir()
    }
    record = json.loads((out / "evolve.json").read_text())
    assert (
        record["best_fitness"] == whole.best[0]
        and len(record["generations"]) == 2
        and record["genome_shape"] == [2, 2, 1, 1]
    )
    assert whole.best[0] == pytest.approx(-whole.best_report.get("tiny_perplexity", "bits_per_byte").value)

    first = _evolution(evolve_config, tmp_path / "split", 4)
    assert len(list(first.run(runner=LocalRunner()))) == 1
    with pytest.raises(ExperimentError, match="already holds a search"):
        next(_evolution(evolve_config, tmp_path / "split", 8).run(runner=LocalRunner()))
    resumed = _evolution(evolve_config, tmp_path / "split", 8)
    assert [g.generation for g in resumed.run(runner=LocalRunner(), resume=True)] == [1]
    assert [r.candidate.values for r in resumed.table.results] == [r.candidate.values for r in whole.table.results]
    assert resumed.generations == whole.generations

    best = yaml.safe_load((out / "best.yml").read_text())
    assert [s["sources"][0]["layer_range"] for s in best["slices"]] == [[0, 2], [2, 4]]
    merged = api.run_merge(out / "best.yml", tmp_path / "merged")  # the best genotype is a plain recipe
    assert merged.plan.method == "linear"


def test_cli_evolve_runs_and_refuses_a_bad_resume(evolve_config: Path, perplexity_task: str, tmp_path: Path, capsys):
    _tasks_from(evolve_config, perplexity_task)
    out = tmp_path / "cli"
    args = [
        "evolve",
        str(evolve_config),
        "--out",
        str(out),
        "--max-fevals",
        "4",
        "--popsize",
        "4",
        "--no-ray",
        "--no-progress",
    ]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "generation 0: best" in printed.out and "warning: apply_chat_template is ignored" in printed.err
    assert main(["evolve", str(evolve_config), "--out", str(tmp_path / "none"), "--resume", "--no-ray"]) == 1
    assert "Cannot resume" in capsys.readouterr().err
