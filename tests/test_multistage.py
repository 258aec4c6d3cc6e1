"""Multi-stage recipes run end to end.

Equal to mergekit-multi, planned whole before any weight is read, intermediates cleaned.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mergehub import api
from mergehub.errors import MergehubError, RecipeError
from mergehub.sources.local import LocalSource
from tests.helpers import load_tensors

THREE_STAGES = """\
# two SLERPs, then TIES of both with a third model
name: pair-a
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {one}
parameters:
  t: [0.1, 0.5, 0.9]
dtype: float32
---
name: pair-b
merge_method: slerp
base_model: {base}
models:
  - model: {two}
  - model: {base}
parameters:
  t: 0.6
dtype: float32
---
merge_method: ties
base_model: {base}
models:
  - model: pair-a
    parameters: {{weight: 0.5, density: 0.7}}
  - model: pair-b
    parameters: {{weight: 0.3, density: 0.5}}
  - model: {three}
    parameters: {{weight: 0.2, density: 0.9}}
dtype: float32
"""


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from mergehub.demo import make_family

    return make_family(tmp_path_factory.mktemp("four"), count=4)


def three_stages(four: list[Path], tmp_path: Path) -> Path:
    path = tmp_path / "multi.yml"
    path.write_text(THREE_STAGES.format(base=four[0], one=four[1], two=four[2], three=four[3]))
    return path


def test_final_output_equals_mergekit_multi(four, tmp_path):
    recipe = three_stages(four, tmp_path)
    ours = api.run_merge(recipe, tmp_path / "ours").out_dir
    multi = Path(sys.executable).parent / "mergekit-multi"
    run = subprocess.run(
        [str(multi), str(recipe), "--out-path", str(tmp_path / "theirs"), "-I", str(tmp_path / "stages")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    mine, theirs = load_tensors(ours), load_tensors(tmp_path / "theirs")
    assert sorted(mine) == sorted(theirs)
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=0, atol=1e-5, msg=name)
    assert (ours / "mergekit_config.yml").read_text() == recipe.read_text()


def test_dry_run_plans_every_stage_from_headers(four, tmp_path, monkeypatch):
    monkeypatch.setattr(LocalSource, "read", lambda self, name: pytest.fail(f"read {name} while planning"))
    plans = api.plan_stages(three_stages(four, tmp_path))
    assert [name for name, _ in plans] == ["pair-a", "pair-b", None]
    final = plans[-1][1]
    assert [m.ref for m in final.models][1:3] == ["pair-a", "pair-b"] and final.method == "ties"
    assert api.plan_merge(three_stages(four, tmp_path)) == final


def test_a_later_stage_is_checked_against_an_earlier_stages_planned_shape(four, tmp_path, monkeypatch):
    text = f"""\
name: short
merge_method: passthrough
slices:
  - sources: [{{model: {four[1]}, layer_range: [0, 2]}}]
---
merge_method: linear
slices:
  - sources:
      - {{model: short, layer_range: [0, 4], parameters: {{weight: 1}}}}
      - {{model: {four[2]}, layer_range: [0, 4], parameters: {{weight: 1}}}}
"""
    (tmp_path / "short.yml").write_text(text)
    monkeypatch.setattr(LocalSource, "read", lambda self, name: pytest.fail(f"read {name} before the plan failed"))
    with pytest.raises(RecipeError, match="The final stage: .*out of bounds: it has 2 layers") as info:
        api.run_merge(tmp_path / "short.yml", tmp_path / "out")
    assert info.value.line == 9
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".mergehub-stages-*"))
    run = subprocess.run(
        [sys.executable, "-m", "mergehub", "merge", str(tmp_path / "short.yml"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and "final stage" in run.stderr and "Traceback" not in run.stderr


def test_intermediates_are_deleted_after_their_last_use(four, tmp_path):
    text = f"""\
name: a
merge_method: linear
models: [{{model: {four[0]}, parameters: {{weight: 1}}}}, {{model: {four[1]}, parameters: {{weight: 1}}}}]
---
name: b
merge_method: linear
models: [{{model: a, parameters: {{weight: 1}}}}, {{model: {four[2]}, parameters: {{weight: 1}}}}]
---
merge_method: linear
models: [{{model: b, parameters: {{weight: 1}}}}, {{model: {four[3]}, parameters: {{weight: 1}}}}]
"""
    (tmp_path / "chain.yml").write_text(text)
    seen = {}

    def on_stage(name: str) -> None:
        scratch = list((tmp_path / "out").parent.glob(".mergehub-stages-*"))
        seen[name] = sorted(p.name for d in scratch for p in d.iterdir())

    result = api.run_merge(tmp_path / "chain.yml", tmp_path / "out", on_stage=on_stage)
    assert seen == {"a": [], "b": ["a"], "final": ["b"]}  # `a` was deleted once `b` was made from it
    assert not list(tmp_path.glob(".mergehub-stages-*")) and result.out_dir.is_dir()
    a = (load_tensors(four[0])["model.norm.weight"] + load_tensors(four[1])["model.norm.weight"]) / 2
    b = (a + load_tensors(four[2])["model.norm.weight"]) / 2
    torch.testing.assert_close(
        load_tensors(result.out_dir)["model.norm.weight"], (b + load_tensors(four[3])["model.norm.weight"]) / 2
    )


def test_intermediate_dir_keeps_every_stage(four, tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mergehub",
            "merge",
            str(three_stages(four, tmp_path)),
            str(tmp_path / "out"),
            "--intermediate-dir",
            str(tmp_path / "keep"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["pair-a", "pair-b"]
    assert (tmp_path / "keep" / "pair-a" / "README.md").is_file()


def test_a_failing_stage_leaves_nothing_behind(four, tmp_path, monkeypatch):
    from mergehub.errors import SourceError

    original = LocalSource.read

    def failing(self, name):
        if "pair-b" in str(self.directory) and name == "model.layers.2.mlp.up_proj.weight":
            raise SourceError("disk went away")
        return original(self, name)

    monkeypatch.setattr(LocalSource, "read", failing)
    with pytest.raises(SourceError, match="The final stage: disk went away"):
        api.run_merge(three_stages(four, tmp_path), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi.yml"]


def test_final_card_shows_every_stage_and_the_lineage_of_stage_outputs(four, tmp_path):
    result = api.run_merge(three_stages(four, tmp_path), tmp_path / "out")
    card = (result.out_dir / "README.md").read_text()
    assert "3-stage merge" in card and "| pair-a | `slerp` |" in card and "| (final) | `ties` |" in card
    lineage = card.split("## Lineage")[1]
    assert '["pair-a<br/>stage output"]' in lineage and '["pair-b<br/>stage output"]' in lineage
    assert lineage.count("-->|slerp|") == 4 and lineage.count("-->|ties|") == 4
    assert card.count("name: pair-b") == 1  # the whole recipe once


def test_a_stage_named_for_pushing_gets_its_own_repo_and_card(hub, four, tmp_path):
    from huggingface_hub import HfApi, ModelCard

    recipe = three_stages(four, tmp_path)
    with pytest.raises(RecipeError, match="`pair-c`, which is not an intermediate stage") as caught:
        api.run_merge(recipe, tmp_path / "out", push_stages={"pair-c": "x"})
    assert "pair-a, pair-b" in caught.value.hint and not HfApi().repo_exists("alice/x")
    with pytest.raises(RecipeError, match="not a Hub repo name"):  # the dry run checks them too
        api.plan_stages(recipe, push_stages={"pair-a": "bad name"})

    run = subprocess.run(
        [sys.executable, "-m", "mergehub", "merge", str(recipe), str(tmp_path / "out"), "--no-progress"]
        + ["--push-stage", "pair-a=first-pair", "--intermediate-dir", str(tmp_path / "keep")],
        capture_output=True,
        text=True,
        timeout=300,
    )  # the local Hub's address and alice's token are in the environment
    assert run.returncode == 0, run.stderr
    assert "Pushed stage pair-a to alice/first-pair:" in run.stdout
    files = HfApi().list_repo_files("alice/first-pair")
    assert {"README.md", "mergekit_config.yml", "model-00001-of-00001.safetensors"} <= set(files)
    card = ModelCard.load("alice/first-pair")
    assert "slerp" in card.text and "mergehub" in (card.data.tags or [])
    from safetensors.torch import load_file

    pushed = load_file(HfApi().hf_hub_download("alice/first-pair", "model-00001-of-00001.safetensors"))
    kept = load_file(tmp_path / "keep" / "pair-a" / "model-00001-of-00001.safetensors")
    assert pushed.keys() == kept.keys() and all(torch.equal(pushed[k], kept[k]) for k in kept)

    # An up-to-date pushed stage is read from its repo instead of being merged again: the same final output.
    sha = HfApi().model_info("alice/first-pair").sha
    seen = []
    again = api.run_merge(
        recipe, tmp_path / "again", reuse_stages={"pair-a": f"alice/first-pair@{sha}"}, on_stage=seen.append
    )
    assert not again.stages_pushed and seen == ["pair-a", "pair-b", "final"]
    first, second = load_tensors(tmp_path / "out"), load_tensors(again.out_dir)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(MergehubError, match="not an intermediate stage"):
        api.run_merge(recipe, tmp_path / "x", reuse_stages={"final": f"alice/first-pair@{sha}"})
