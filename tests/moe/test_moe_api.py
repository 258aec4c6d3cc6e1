"""MoE assembly through the API, the CLI and the Hub: checked before anything is read, streamed, carded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard

from mergehub import api
from mergehub.errors import PlanError, RecipeError
from mergehub.sources.local import LocalSource


def moe_config(experts: list[Path], **changes) -> dict:
    config = {
        "base_model": str(experts[0]),
        "gate_mode": "cheap_embed",
        "experts_per_token": 2,
        "experts": [
            {"source_model": str(experts[1]), "positive_prompts": ["w1 w2", "w3"], "negative_prompts": ["w9"]},
            {"source_model": str(experts[2]), "positive_prompts": ["w10 w11"]},
        ],
    }
    config.update(changes)
    return config


def write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_dry_run_checks_from_headers_and_reads_no_weight(experts, tmp_path, monkeypatch):
    monkeypatch.setattr(LocalSource, "read", lambda self, name: pytest.fail(f"read {name} during planning"))
    plan = api.plan_merge(write(moe_config(experts), tmp_path / "moe.yml"))
    assert plan.moe is not None and plan.moe.architecture == "Mixtral" and plan.moe.gates.mode == "cheap_embed"
    assert plan.config["num_local_experts"] == 2 and plan.config["num_experts_per_tok"] == 2
    routers = [j for j in plan.jobs if j.name.endswith("block_sparse_moe.gate.weight")]
    assert len(routers) == 4 and routers[0].shape == (2, 64)
    assert not any(".mlp." in j.name for j in plan.jobs)
    from mergehub.plan import Plan

    assert Plan.from_json(plan.to_json()) == plan
    text = plan.describe()
    assert "MoE: Mixtral, 2 experts, 2 per token" in text and "Routers (cheap_embed)" in text


def test_experts_must_share_the_bases_shapes(experts, tmp_path):
    from mergehub.demo import make_tiny_llama

    wider = make_tiny_llama(tmp_path / "wider", hidden=32)
    config = moe_config(experts)
    config["experts"][1]["source_model"] = str(wider)
    with pytest.raises(PlanError, match=r"experts\[1\].*hidden size 32; the base has 64"):
        api.plan_merge(write(config, tmp_path / "moe.yml"))


def test_no_architecture_fits_says_why(experts, qwen3_experts, tmp_path):
    config = moe_config(experts)
    config["experts"][1]["source_model"] = str(qwen3_experts[1])
    with pytest.raises(PlanError, match="one architecture") as info:
        api.plan_merge(write(config, tmp_path / "moe.yml"))
    assert "Mixtral" in info.value.hint
    with pytest.raises(PlanError, match="DeepSeek MoE"):
        api.plan_merge(write(moe_config(experts, architecture="deepseek"), tmp_path / "moe.yml"))
    with pytest.raises(PlanError, match="exactly one shared expert"):
        api.plan_merge(write(moe_config(experts, architecture="qwen"), tmp_path / "moe.yml"))


def test_prompts_need_the_bases_tokenizer(family, tmp_path):
    config = {
        "base_model": str(family[0]),
        "gate_mode": "hidden",
        "experts": [
            {"source_model": str(family[1]), "positive_prompts": ["a"]},
            {"source_model": str(family[2]), "positive_prompts": ["b"]},
        ],
    }
    with pytest.raises(PlanError, match="no tokenizer files"):
        api.plan_merge(write(config, tmp_path / "moe.yml"))
    config["gate_mode"] = "random"
    assert api.plan_merge(write(config, tmp_path / "moe.yml")).moe.gates.mode == "random"


def test_cli_moe_command_dry_run_and_errors(experts, tmp_path):
    path = write(moe_config(experts), tmp_path / "moe.yml")
    run = subprocess.run(
        [sys.executable, "-m", "mergehub", "moe", str(path), "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "MoE: Mixtral" in run.stdout and "Plan OK" in run.stderr
    same = moe_config(experts)
    same["experts"][1]["positive_prompts"] = list(same["experts"][0]["positive_prompts"])
    same["experts"][1]["negative_prompts"] = list(same["experts"][0]["negative_prompts"])
    bad = write(same, tmp_path / "same.yml")
    run = subprocess.run(
        [sys.executable, "-m", "mergehub", "merge", str(bad), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "same for every expert" in run.stderr and "hint:" in run.stderr
    assert not (tmp_path / "out").exists()


def test_cli_assembles_and_the_output_loads(experts, tmp_path):
    path = write(moe_config(experts, experts_per_token=1), tmp_path / "moe.yml")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mergehub",
            "moe",
            str(path),
            str(tmp_path / "out"),
            "--no-progress",
            "--no-prompt-cache",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {
        "config.json",
        "mergekit_moe_config.yml",
        "README.md",
        "tokenizer.json",
        "model.safetensors.index.json",
    } <= files
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(model).__name__ == "MixtralForCausalLM" and model.config.num_experts_per_tok == 1


def test_a_strict_run_refuses_ignored_keys(experts, tmp_path):
    path = write(moe_config(experts, gates="hidden"), tmp_path / "moe.yml")
    with pytest.raises(RecipeError, match="strict"):
        api.run_merge(path, tmp_path / "out", strict=True)
    assert not (tmp_path / "out").exists()


def test_push_streams_experts_from_the_hub_and_cards_every_expert(hub, experts, tmp_path):
    shas = {name: hub.add_repo(f"org/{name}", path) for name, path in zip(["base", "math", "code", "chat"], experts)}
    config = {
        "base_model": "org/base",
        "gate_mode": "hidden",
        "experts_per_token": 2,
        "experts": [
            {"source_model": "org/math", "positive_prompts": ["w1 w2 w3"]},
            {"source_model": "org/code", "positive_prompts": ["w10 w11"], "negative_prompts": ["w1"]},
            {"source_model": "org/chat", "positive_prompts": ["w20"]},
        ],
    }
    result, pushed = api.push_merge(write(config, tmp_path / "moe.yml"), "moe", prompt_cache=False)
    assert pushed.repo_id == "alice/moe"
    assert {m.ref: m.revision for m in result.plan.models} == {
        f"org/{n}": shas[n] for n in ["base", "math", "code", "chat"]
    }
    files = set(HfApi().list_repo_files("alice/moe"))
    assert {"mergekit_moe_config.yml", "config.json", "README.md"} <= files
    card = ModelCard.load("alice/moe")
    assert card.data.base_model == ["org/base", "org/math", "org/code", "org/chat"]
    assert card.data.base_model_relation == "merge"
    assert {"moe", "mergekit", "merge"} <= set(card.data.tags)
    assert "## Experts" in card.text and "`w10 w11`" in card.text and "| 1 | [org/code]" in card.text
    assert "org/chat" in card.text.split("## Lineage")[1]
