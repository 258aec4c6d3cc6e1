"""mergehub.experiments: sweeps planned up front, run in this process, their tables, summaries and plots; the CLI."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from mergehub import api
from mergehub.errors import ExperimentError, RecipeError
from mergehub.experiments import (
    CandidateResult,
    LocalRunner,
    RunSettings,
    memory_needs,
    prepare_sweep,
)
from mergehub.experiments.candidate import RUNTIME_BYTES
from mergehub.interfaces.cli import main
from tests.experiments.conftest import LIMIT

pytest.importorskip("lm_eval")
pytest.importorskip("matplotlib")

WEIGHTS = "models[1].parameters.weight=0.2:0.8:3"


def _run(sweep, out: Path, mode: str = "auto") -> list[CandidateResult]:
    return list(sweep.run(out, runner=LocalRunner(), run=RunSettings(mode=mode)))


def test_every_variant_is_planned_before_anything_runs(linear_recipe: Path, tmp_path: Path):
    sweep = prepare_sweep(linear_recipe, [WEIGHTS, "parameters.normalize=true,false"], ["mergehub_facts"])
    assert len(sweep.candidates) == 6
    assert "v005  models[1].parameters.weight=0.8, parameters.normalize=False" in sweep.describe()
    with pytest.raises(RecipeError, match=r"Variant v001 \(models\[1\].parameters.weight=abc\).*'abc' is not a float"):
        prepare_sweep(linear_recipe, ["models[1].parameters.weight=0.5,abc"], ["mergehub_facts"])
    with pytest.raises(
        RecipeError, match=r"Variant v000 \(merge_method=task_arithmetic\): task_arithmetic needs a `base_model`"
    ):
        prepare_sweep(linear_recipe, ["merge_method=task_arithmetic"], ["mergehub_facts"])
    with pytest.raises(RecipeError, match="needs tasks"):
        prepare_sweep(linear_recipe, [WEIGHTS], [])


def test_what_a_variant_sets_that_is_ignored_is_said(linear_recipe: Path):
    sweep = prepare_sweep(linear_recipe, ["parameters.embed_slerp=true,false"], ["mergehub_facts"])
    assert sweep.warnings and all("embed_slerp" in w for w in sweep.warnings)
    assert "Warning: " in sweep.describe()


def test_memory_needs_come_from_the_plan(linear_recipe: Path):
    plan = api.plan_merge(linear_recipe)
    needs = memory_needs(plan)
    elements = sum(math.prod(job.shape) for job in plan.jobs)
    merging, evaluating = plan.peak_memory_bytes + RUNTIME_BYTES, 4 * elements + RUNTIME_BYTES
    assert needs.on_disk == max(merging, evaluating)
    assert needs.in_memory == plan.write_bytes + max(merging, evaluating)


def test_a_sweep_writes_table_summary_and_plots(linear_recipe: Path, perplexity_task: str, tmp_path: Path):
    sweep = prepare_sweep(linear_recipe, [WEIGHTS], [perplexity_task, "mergehub_facts"], limit=LIMIT, eval_parents=True)
    out = tmp_path / "sweep"
    results = _run(sweep, out)
    assert sorted(r.candidate.name for r in results) == ["parent-0", "parent-1", "v000", "v001", "v002"]
    assert all(r.ok and r.report is not None for r in results)
    assert {r.mode for r in results} == {"parent", "memory"}
    files = {p.name for p in out.iterdir()}
    assert {
        "recipe.yml",
        "variants",
        "results.json",
        "results.csv",
        "summary.md",
        "sweep-models-1-parameters-weight.png",
    } <= files
    assert (out / "sweep-models-1-parameters-weight.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((out / "variants" / "v002.yml").read_text())["models"][1]["parameters"]["weight"] == 0.8

    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [r["candidate"] for r in rows] == ["parent-0", "parent-1", "v000", "v001", "v002"]
    assert [r["models[1].parameters.weight"] for r in rows[2:]] == ["0.2", "0.5", "0.8"]
    for column in (
        "tiny_perplexity/word_perplexity",
        "mergehub_facts/acc",
        "mergehub_facts/acc stderr",
        "objective",
        "merge_seconds",
        "eval_seconds",
        "status",
    ):
        assert column in rows[0]
    perplexities = [float(r["tiny_perplexity/word_perplexity"]) for r in rows[2:]]
    assert len(set(perplexities)) == 3  # the weight changes the model

    best = sweep.table.best()
    data = json.loads((out / "results.json").read_text())
    assert data["best"] == best.candidate.name and data["varied"] == ["models[1].parameters.weight"]
    again = [CandidateResult.from_dict(c) for c in data["candidates"]]
    assert [r.report for r in again] == [r.report for r in sweep.table.results]
    assert all(sweep.table.score(best) >= sweep.table.score(r) for r in sweep.table.variants())
    summary = (out / "summary.md").read_text()
    assert f"Best: **{best.candidate.name}**" in summary and "![sweep-models-1-parameters-weight.png]" in summary
    assert f"| `{Path(sweep.candidates[0].model).name}` |" in summary  # parents are rows of the table, by name


def test_in_memory_and_on_disk_candidates_score_the_same(linear_recipe: Path, perplexity_task: str, tmp_path: Path):
    sweep = prepare_sweep(linear_recipe, ["models[1].parameters.weight=0.3,0.9"], [perplexity_task], limit=LIMIT)
    memory = _run(sweep, tmp_path / "memory", mode="memory")
    disk = _run(
        prepare_sweep(linear_recipe, ["models[1].parameters.weight=0.3,0.9"], [perplexity_task], limit=LIMIT),
        tmp_path / "disk",
        mode="disk",
    )
    assert [r.mode for r in memory] == ["memory"] * 2 and [r.mode for r in disk] == ["disk"] * 2
    assert [r.report.results for r in memory] == [r.report.results for r in disk]


def test_heatmap_for_two_parameters_and_scatter_for_samples(linear_recipe: Path, tmp_path: Path):
    grid = prepare_sweep(
        linear_recipe,
        ["models[0].parameters.weight=0.5,1", "models[1].parameters.weight=0.5,1"],
        ["mergehub_facts"],
        limit=2,
    )
    _run(grid, tmp_path / "grid")
    assert (tmp_path / "grid" / "sweep-heatmap.png").is_file()
    sampled = prepare_sweep(linear_recipe, [WEIGHTS], ["mergehub_facts"], limit=2, samples=2, seed=5)
    assert [v.values for v in sampled.variants] == [
        v.values for v in prepare_sweep(linear_recipe, [WEIGHTS], ["mergehub_facts"], samples=2, seed=5).variants
    ]
    _run(sampled, tmp_path / "sampled")
    assert (tmp_path / "sampled" / "sweep-models-1-parameters-weight.png").is_file()
    assert not (tmp_path / "sampled" / "sweep-heatmap.png").exists()


def test_a_failing_candidate_is_recorded_and_the_others_go_on(scored_family, linear_recipe: Path, tmp_path: Path):
    victim = tmp_path / "tuned-copy"
    shutil.copytree(scored_family[1], victim)
    recipe = yaml.safe_load(linear_recipe.read_text())
    recipe["models"][1]["model"] = str(victim)
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump(recipe))
    sweep = prepare_sweep(path, ["models[0].parameters.weight=0.5,1"], ["mergehub_facts"], limit=2, eval_parents=True)
    (victim / "model.safetensors").unlink()  # planned fine, gone when the candidates run
    results = _run(sweep, tmp_path / "out")
    failed = [r for r in results if not r.ok]
    assert sorted(r.candidate.name for r in failed) == ["parent-1", "v000", "v001"]
    assert all(r.error for r in failed)
    assert [r.candidate.name for r in results if r.ok] == ["parent-0"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "results.csv").read_text())))
    assert [r["status"] for r in rows] == ["ok", "failed", "failed", "failed"]
    assert sweep.table.best() is None


def test_missing_ray_says_how_to_install_it(monkeypatch):
    from mergehub.experiments.runner import RayRunner

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ExperimentError, match="Running candidates on Ray needs ray") as caught:
        RayRunner().__enter__()
    assert "pip install 'mergehub[experiments]'" in caught.value.hint and "--no-ray" in caught.value.hint


def test_cli_sweep_dry_run_and_local_run(linear_recipe: Path, tmp_path: Path, capsys):
    assert main(["sweep", str(linear_recipe), "--vary", WEIGHTS, "--eval", "mergehub_facts", "--dry-run"]) == 0
    assert "v002  models[1].parameters.weight=0.8" in capsys.readouterr().out
    out = tmp_path / "cli"
    args = [
        "sweep",
        str(linear_recipe),
        "--vary",
        "models[1].parameters.weight=0.4,0.6",
        "--eval",
        "mergehub_facts",
        "--limit",
        "2",
        "--no-ray",
        "--no-progress",
        "--out",
        str(out),
        "--merge-to",
        "disk",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| v001 | 0.6 |" in printed and "Best: v000" in printed
    assert json.loads((out / "results.json").read_text())["candidates"][0]["mode"] == "disk"
    assert main(args) == 1
    assert "already holds results" in capsys.readouterr().err
    assert (
        main(["sweep", str(linear_recipe), "--vary", "models[9].parameters.weight=1", "--eval", "mergehub_facts"]) == 1
    )
    assert "index 9 is out of range" in capsys.readouterr().err


def test_run_candidate_merges_in_memory_like_run_merge(linear_recipe: Path, tmp_path: Path):
    from tests.helpers import load_tensors

    merged = api.merge_in_memory(linear_recipe)
    written = api.run_merge(linear_recipe, tmp_path / "out")
    expected = load_tensors(written.out_dir)
    assert merged.tensors.keys() == expected.keys()
    assert all(merged.tensors[k].dtype == expected[k].dtype and merged.tensors[k].equal(expected[k]) for k in expected)
    assert {"config.json", "mergekit_config.yml", "tokenizer.json"} <= merged.files.keys()
    assert merged.files["config.json"] == (written.out_dir / "config.json").read_bytes()
