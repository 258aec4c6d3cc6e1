"""Sweeps over Hub models (the local Hub server): pinned parents, inputs streamed once into the cache, the winner
pushed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from mergehub.experiments import LocalRunner, RunSettings, prepare_sweep
from mergehub.interfaces.cli import main
from tests.experiments.conftest import LIMIT

pytest.importorskip("lm_eval")
pytest.importorskip("matplotlib")


@pytest.fixture
def hub_recipe(hub, scored_family: list[Path], tmp_path: Path) -> Path:
    """The base and a fine-tune as Hub repos `org/base` and `org/tuned`, and a linear recipe of the two."""
    for name, directory in (("org/base", scored_family[0]), ("org/tuned", scored_family[1])):
        hub.add_repo(name, {p.name: p for p in directory.iterdir() if p.is_file()})
    path = tmp_path / "hub.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "merge_method": "linear",
                "models": [
                    {"model": "org/base", "parameters": {"weight": 0.5}},
                    {"model": "org/tuned", "parameters": {"weight": 0.5}},
                ],
                "dtype": "bfloat16",
            }
        )
    )
    return path


def test_hub_inputs_are_pinned_and_streamed_once_per_node(
    hub, hub_recipe: Path, scored_family: list[Path], tmp_path: Path
):
    sweep = prepare_sweep(hub_recipe, ["models[1].parameters.weight=0.2,0.5,0.8"], ["mergehub_facts"], limit=2)
    shas = {name: hub.revision_sha(name) for name in ("org/base", "org/tuned")}
    for text in sweep.recipes:
        assert [m["model"] for m in yaml.safe_load(text)["models"]] == [
            f"org/base@{shas['org/base']}",
            f"org/tuned@{shas['org/tuned']}",
        ]
    hub.reset_stats()
    results = list(
        sweep.run(tmp_path / "out", runner=LocalRunner(), run=RunSettings(cache_dir=str(tmp_path / "cache")))
    )
    assert all(r.ok for r in results)
    weights = {repo: served for (repo, path), served in hub.bytes_served.items() if path.endswith(".safetensors")}
    size = (scored_family[0] / "model.safetensors").stat().st_size
    assert set(weights) == {"org/base", "org/tuned"}
    assert all(served < 1.5 * size for served in weights.values())  # once for three candidates, not three times
    first = list(
        sweep.run(tmp_path / "again", runner=LocalRunner(), run=RunSettings(cache_dir=str(tmp_path / "cache")))
    )
    again = {repo: served for (repo, path), served in hub.bytes_served.items() if path.endswith(".safetensors")}
    assert again == weights  # the second sweep read every tensor from the node's cache
    assert [r.report.results for r in first] == [r.report.results for r in results]


def test_a_lora_reference_stays_in_every_variant_pinned(
    hub, hub_recipe: Path, scored_family: list[Path], tmp_path: Path
):
    from mergehub.experiments.results import model_label
    from tests.helpers import make_lora

    hub.add_repo(
        "org/lora", make_lora(scored_family[0], tmp_path / "lora", r=2, lora_alpha=4, target_modules=["q_proj"])
    )
    hub_recipe.write_text(hub_recipe.read_text().replace("model: org/base", "model: org/base+org/lora"))
    sweep = prepare_sweep(
        hub_recipe, ["models[1].parameters.weight=0.2,0.8"], ["mergehub_facts"], limit=2, eval_parents=True
    )
    pinned = f"org/base@{hub.revision_sha('org/base')}+org/lora@{hub.revision_sha('org/lora')}"
    assert all(yaml.safe_load(text)["models"][0]["model"] == pinned for text in sweep.recipes)
    assert pinned in [c.model for c in sweep.candidates]
    assert model_label(pinned) == "org/base+org/lora"


def test_push_best_puts_the_sweep_in_the_card(hub, hub_recipe: Path, tmp_path: Path, capsys):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        str(hub_recipe),
        "--vary",
        "models[1].parameters.weight=0.3,0.7",
        "--eval",
        "mergehub_facts",
        "--limit",
        str(LIMIT),
        "--eval-parents",
        "--no-ray",
        "--no-progress",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--push-best",
        "best-merge",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    best = json.loads((out / "results.json").read_text())["best"]
    assert f"Pushed {best} to alice/best-merge" in printed
    files = set(HfApi().list_repo_files("alice/best-merge"))
    assert {
        "sweep-results.csv",
        "sweep-results.json",
        "sweep-models-1-parameters-weight.png",
        "mergekit_config.yml",
        "README.md",
    } <= files
    card = ModelCard(Path(hf_hub_download("alice/best-merge", "README.md")).read_text())
    assert (
        "## Sweep" in card.text
        and "![sweep-models-1-parameters-weight](sweep-models-1-parameters-weight.png)" in card.text
    )
    assert card.text.index("## Sweep") < card.text.index("## Recipe")
    assert f"**{best}** ★" in card.text and "| v001 |" in card.text.replace("| **v001** ★ |", "| v001 |")
    assert "Compared with the parents" in card.text
    assert {r.dataset_name for r in card.data.eval_results} == {"mergehub_facts"}
    pushed_recipe = Path(hf_hub_download("alice/best-merge", "mergekit_config.yml")).read_text()
    assert pushed_recipe == (out / "variants" / f"{best}.yml").read_text()


def test_evolve_pushes_the_best_with_the_search_in_its_card(hub, scored_family: list[Path], tmp_path: Path, capsys):
    pytest.importorskip("cma")
    config = tmp_path / "evolve.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "genome": {"models": [str(scored_family[1]), str(scored_family[2])], "merge_method": "linear"},
                "tasks": [{"name": "mergehub_facts", "metric": "acc_norm,none"}],
                "limit": 2,
            }
        )
    )
    out = tmp_path / "search"
    args = [
        "evolve",
        str(config),
        "--out",
        str(out),
        "--max-fevals",
        "4",
        "--popsize",
        "4",
        "--no-ray",
        "--no-progress",
        "--push",
        "evolved",
    ]
    assert main(args) == 0
    assert "Pushed the best candidate to alice/evolved" in capsys.readouterr().out
    files = set(HfApi().list_repo_files("alice/evolved"))
    assert {"evolve.png", "evolve.json", "evolve-results.csv", "mergekit_config.yml", "README.md"} <= files
    card = Path(hf_hub_download("alice/evolved", "README.md")).read_text()
    assert "## Evolutionary search" in card and "![evolve](evolve.png)" in card and "| Generation |" in card
    assert Path(hf_hub_download("alice/evolved", "mergekit_config.yml")).read_text() == (out / "best.yml").read_text()
