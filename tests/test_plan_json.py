"""A plan is the whole merge: read back from JSON and executed, it writes the same bytes as a direct merge."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergehub import Plan, PlanError, open_sources, plan_merge, run_merge
from mergehub.demo import make_tiny_llama
from mergehub.recipe import load_recipe
from tests.helpers import CHATML, WORDS, make_tokenizer


@pytest.fixture(scope="module")
def vocab_family(tmp_path_factory) -> list[Path]:
    """A base with 50 tokens and two models with two ChatML tokens more (52 rows), each with a generation config."""
    root = tmp_path_factory.mktemp("plan-json")
    models = []
    for i, (vocab, added) in enumerate([(50, ()), (52, tuple(CHATML)), (52, tuple(CHATML))]):
        directory = make_tiny_llama(root / f"m{i}", vocab=vocab, seed=i)
        for name, data in make_tokenizer(WORDS, added).items():
            (directory / name).write_bytes(data)
        (directory / "generation_config.json").write_text(f'{{"temperature": 0.{i + 1}}}\n')
        models.append(directory)
    return models


def _recipe(models: list[Path]) -> dict:
    """A random method (dare_ties), a vocabulary union, a built-in chat template and a dtype change."""
    return {
        "merge_method": "dare_ties",
        "base_model": str(models[0]),
        "models": [{"model": str(m), "parameters": {"weight": 0.5, "density": 0.6}} for m in models[1:]],
        "tokenizer_source": "union",
        "chat_template": "chatml",
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_plan_from_json_reproduces_the_merge_byte_for_byte(vocab_family, write_recipe, tmp_path):
    path = write_recipe(_recipe(vocab_family))
    direct = run_merge(path, tmp_path / "direct", seed=7, out_shard_bytes=100_000)
    recipe = load_recipe(path)
    with open_sources(recipe) as sources:
        plan = plan_merge(recipe, sources, seed=7, out_shard_bytes=100_000)
    assert plan == direct.plan
    assert plan.vocab is not None and plan.vocab.rows == 52 and plan.seed == 7 and len(plan.shards) > 1
    assert plan.chat_template and "<|im_start|>" in plan.chat_template and b"temperature" in plan.generation_config
    assert plan.recipe_text == path.read_text() and set(plan.tokenizer_files) >= {
        "tokenizer.json",
        "tokenizer_config.json",
    }

    text = plan.to_json()
    again = Plan.from_json(text)
    assert again == plan and again.to_json() == text
    replayed = run_merge(again, tmp_path / "replayed")

    written, expected = _files(replayed.out_dir), _files(direct.out_dir)
    assert written.keys() == expected.keys() and {s.filename for s in plan.shards} <= written.keys()
    for name in expected:
        if name == "README.md":  # the card's rerun command names the output directory
            assert written[name] == expected[name].replace(b"direct", b"replayed")
        else:
            assert written[name] == expected[name], name
    assert [s.sha256 for s in replayed.shards] == [s.sha256 for s in direct.shards]


def test_a_plan_keeps_its_seed_and_another_seed_changes_a_random_merge(vocab_family, write_recipe, tmp_path):
    path = write_recipe(_recipe(vocab_family))
    plan = plan_merge(path, seed=7)
    with pytest.raises(PlanError, match="seed 8 \\(the plan has 7\\)"):
        run_merge(plan, tmp_path / "refused", seed=8)
    seven, eight = run_merge(plan, tmp_path / "seven"), run_merge(path, tmp_path / "eight", seed=8)
    assert seven.shards[0].sha256 != eight.shards[0].sha256


def test_from_json_refuses_what_is_not_a_plan_of_this_format(family, write_recipe):
    plan = plan_merge(
        write_recipe(
            {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1}} for m in family]}
        )
    )
    with pytest.raises(PlanError, match="Not a mergehub plan"):
        Plan.from_json('{"method": "linear"}')
    with pytest.raises(PlanError, match="format is 99"):
        Plan.from_json(plan.to_json().replace('"format": 1', '"format": 99'))


def test_a_plan_runs_at_its_pinned_commits_and_refuses_sources_at_others(hub, family, write_recipe, tmp_path):
    for name, directory in (("org/base", family[0]), ("org/ft", family[1])):
        hub.add_repo(name, {p.name: p for p in directory.iterdir() if p.is_file()})
    recipe = {
        "merge_method": "linear",
        "models": [{"model": m, "parameters": {"weight": 1}} for m in ("org/base", "org/ft")],
    }
    path = write_recipe(recipe)
    plan = Plan.from_json(plan_merge(path).to_json())
    planned = hub.revision_sha("org/ft")
    assert plan.model("org/ft").revision == planned and str(plan.model("org/ft").pinned) == f"org/ft@{planned}"
    first = run_merge(plan, tmp_path / "first")

    hub.commit_files("org/ft", {p.name: p for p in family[2].iterdir() if p.name.endswith(".safetensors")})
    again = run_merge(plan, tmp_path / "again")  # opens the plan's models at the planned commits, not at main
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in first.shards]
    with open_sources(load_recipe(path)) as moved, pytest.raises(PlanError, match=f"org/ft at commit {planned}"):
        run_merge(plan, tmp_path / "moved", sources=moved)
    assert not (tmp_path / "moved").exists()
