"""`mergehub extract-lora`: LoRA adapters from fine-tunes, through the merge's plan and executor, checked against the
delta they come from, against mergekit-extract-lora, and against peft loading them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mergehub import ExtractOptions, PlanError, RecipeError, extract_lora, plan_extraction
from mergehub.demo import make_tiny_llama
from mergehub.extraction import parse_extraction
from mergehub.recipe import ModelRef
from mergehub.sources import open_source
from tests.helpers import load_tensors, make_lora

pytest.importorskip("peft")

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PREFIX = "base_model.model."


@pytest.fixture(scope="module")
def lora_finetune(family, tmp_path_factory) -> tuple[Path, Path]:
    """A rank-4 LoRA adapter on the family's base, and the fine-tune it makes (merged by peft, saved whole)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lora-finetune")
    adapter = make_lora(family[0], root / "adapter", seed=11, r=4, lora_alpha=8, target_modules=LINEAR)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(family[0]), adapter).merge_and_unload()
    merged.save_pretrained(root / "finetune")
    return adapter, root / "finetune"


def _products(adapter: Path) -> dict[str, torch.Tensor]:
    """B·A of every LoRA module of an adapter directory, by module name, shaped as the module's weight (an
    embedding's transposed back) and unscaled (extracted adapters have scaling 1)."""
    tensors = load_file(adapter / "adapter_model.safetensors")
    products = {}
    for name, a in tensors.items():
        if ".lora_A." in name or name.endswith("lora_embedding_A"):
            b = tensors[name.replace("lora_A", "lora_B").replace("lora_embedding_A", "lora_embedding_B")]
            product = b.float() @ a.float()
            products[name.removeprefix(PREFIX).split(".lora_")[0]] = product.T if "embedding" in name else product
    return products


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 17, 33, 65, 100, 200]])).logits


def test_extraction_recovers_a_lora_delta_to_float32_error(family, lora_finetune, tmp_path):
    adapter, finetune = lora_finetune
    result = extract_lora(str(family[0]), str(finetune), tmp_path / "out", ExtractOptions(rank=16, sv_epsilon=1e-5))
    assert set(result.ranks.values()) == {4}  # the delta's true rank, found below the cap of 16
    assert max(result.errors.values()) < 1e-5
    reference = load_file(adapter / "adapter_model.safetensors")
    for module, product in _products(result.out_dir).items():
        a, b = reference[f"{PREFIX}{module}.lora_A.weight"], reference[f"{PREFIX}{module}.lora_B.weight"]
        expected = 2.0 * (b @ a)  # lora_alpha / r = 8 / 4
        torch.testing.assert_close(product, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    config = json.loads((result.out_dir / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 4 and config["rank_pattern"] == {}
    assert config["target_modules"] == sorted(LINEAR)


# mergekit-extract-lora's flags and the same options here (its --save-module fails in 0.1.5: a tuple is appended to)
MERGEKIT_OPTIONS = {
    "defaults": ([], {}),
    "embeddings as LoRA, scale in A": (
        ["--embed-lora", "--no-distribute-scale"],
        {"embed_lora": True, "distribute_scale": False},
    ),
    "regexes, undecomposable skipped": (
        ["-i", "self_attn", "-e", r"layers\.0\.", "--skip-undecomposable"],
        {"include": ("self_attn",), "exclude": (r"layers\.0\.",), "skip_undecomposable": True},
    ),
    "singular-value threshold": (["--sv-epsilon", "0.05"], {"sv_epsilon": 0.05}),
}


@pytest.mark.parametrize("flags, options", list(MERGEKIT_OPTIONS.values()), ids=list(MERGEKIT_OPTIONS))
def test_reconstruction_error_and_factors_match_mergekit_extract_lora(family, tmp_path, flags, options):
    command = Path(sys.executable).parent / "mergekit-extract-lora"
    if not command.is_file() and shutil.which("mergekit-extract-lora") is None:
        pytest.skip("mergekit-extract-lora is not installed")
    subprocess.run(
        [
            str(command if command.is_file() else "mergekit-extract-lora"),
            "--model",
            str(family[1]),
            "--base-model",
            str(family[0]),
            "--out-path",
            str(tmp_path / "mergekit"),
            "--max-rank",
            "8",
            *flags,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    ours = extract_lora(str(family[0]), str(family[1]), tmp_path / "mergehub", ExtractOptions(rank=8, **options))
    tensors = load_file(ours.out_dir / "adapter_model.safetensors")
    for name, tensor in load_file(tmp_path / "mergekit" / "adapter_model.safetensors").items():
        if ".lora_" not in name:  # saved whole: the fine-tune's tensor
            torch.testing.assert_close(tensors[name], tensor, rtol=0, atol=0, msg=name)
    theirs_tensors = load_file(tmp_path / "mergekit" / "adapter_model.safetensors")
    assert set(load_file(ours.out_dir / "adapter_model.safetensors")) == set(theirs_tensors)
    base, tuned = load_tensors(family[0]), load_tensors(family[1])
    theirs = _products(tmp_path / "mergekit")
    for module, product in _products(ours.out_dir).items():
        delta = tuned[f"{module}.weight"] - base[f"{module}.weight"]
        their_error = float((delta - theirs[module]).norm() / delta.norm())
        assert abs(ours.errors[module] - their_error) <= 1e-4 * their_error, module
        torch.testing.assert_close(product, theirs[module], rtol=0, atol=1e-5)
    config, their_config = (
        json.loads((d / "adapter_config.json").read_text()) for d in (ours.out_dir, tmp_path / "mergekit")
    )
    assert set(config["modules_to_save"]) == set(their_config["modules_to_save"])
    assert config["r"] == their_config["r"] and config["rank_pattern"] == their_config.get("rank_pattern", {})
    # mergekit names the kinds of module (so peft also wraps the excluded ones); mergehub names the modules it extracted
    assert {m.rpartition(".")[2] for m in config["target_modules"]} == set(their_config["target_modules"])


def test_extracted_adapter_loads_with_peft_and_gives_the_fine_tunes_logits(family, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # full rank: exact
    result = extract_lora(str(family[0]), str(family[1]), tmp_path / "full", ExtractOptions(rank=64))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(family[0]), result.out_dir)
    torch.testing.assert_close(
        _logits(peft_model), _logits(AutoModelForCausalLM.from_pretrained(family[1])), rtol=0, atol=1e-4
    )


def test_rank_energy_gives_each_module_its_rank_and_peft_loads_the_pattern(family, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = extract_lora(str(family[0]), str(family[1]), tmp_path / "energy", ExtractOptions(rank=48, rank_energy=0.5))
    base, tuned = load_tensors(family[0]), load_tensors(family[1])
    for module, rank in result.ranks.items():
        singular = torch.linalg.svdvals((tuned[f"{module}.weight"] - base[f"{module}.weight"]).double())
        kept = torch.cumsum(singular**2, 0) / (singular**2).sum()
        assert rank == min(48, int((kept < 0.5).sum()) + 1), module
    config = json.loads((result.out_dir / "adapter_config.json").read_text())
    assert len(set(result.ranks.values())) > 1 and config["r"] == max(result.ranks.values())
    assert (
        config["rank_pattern"] == config["alpha_pattern"] == {m: r for m, r in result.ranks.items() if r != config["r"]}
    )
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(family[0]), result.out_dir
    ).merge_and_unload()
    # mergehub applies it back the same way
    source = open_source(ModelRef(str(family[0]), None, ModelRef(str(result.out_dir))))
    try:
        state = peft_model.state_dict()
        for name, tensor in source.read_many(list(source.tensors())).items():
            torch.testing.assert_close(tensor, state[name], rtol=0, atol=1e-6)
    finally:
        source.close()


def test_options_decide_each_modules_fate(family, tmp_path):
    plan = plan_extraction(
        str(family[0]),
        str(family[1]),
        ExtractOptions(
            rank=4,
            include=("self_attn",),
            exclude=(r"layers\.0\.",),
            save_modules=("v_proj",),
            skip_undecomposable=True,
        ),
    )
    extracted = {job.name for job in plan.jobs if job.method == "extract_lora"}
    assert extracted == {
        f"model.layers.{i}.self_attn.{p}.weight" for i in (1, 2, 3) for p in ("q_proj", "k_proj", "o_proj")
    }
    saved = {job.name for job in plan.jobs if job.method == "passthrough"}
    assert saved == {
        f"{PREFIX}{n}.weight"
        for n in ["lm_head", "model.embed_tokens"] + [f"model.layers.{i}.self_attn.v_proj" for i in range(4)]
    }
    assert plan.config["modules_to_save"] == ["v_proj", "lm_head", "embed_tokens"]
    assert plan.config["target_modules"] == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in (1, 2, 3) for p in ("q_proj", "k_proj", "o_proj")
    )
    assert not plan.warnings  # the norms are not included: left out, as mergekit leaves them
    assert type(plan).from_json(plan.to_json()) == plan
    skipped = plan_extraction(str(family[0]), str(family[1]), ExtractOptions(rank=4, skip_undecomposable=True))
    assert skipped.config["modules_to_save"] == ["lm_head", "embed_tokens"]
    assert [w.message for w in skipped.warnings] == [
        "Modules that are not matrices are left out (skip_undecomposable): "
        "input_layernorm, post_attention_layernorm, norm."
    ]


def test_embeddings_as_lora_load_with_peft(family, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = extract_lora(str(family[0]), str(family[1]), tmp_path / "embed", ExtractOptions(rank=64, embed_lora=True))
    tensors = load_file(result.out_dir / "adapter_model.safetensors")
    # (r, vocab): transposed, as peft's
    assert tensors[f"{PREFIX}model.embed_tokens.lora_embedding_A"].shape == (64, 256)
    assert tensors[f"{PREFIX}model.embed_tokens.lora_embedding_B"].shape == (64, 64)
    assert f"{PREFIX}lm_head.lora_A.weight" in tensors
    assert json.loads((result.out_dir / "adapter_config.json").read_text())["modules_to_save"] == [
        "input_layernorm",
        "post_attention_layernorm",
        "norm",
    ]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(family[0]), result.out_dir)
    torch.testing.assert_close(
        _logits(peft_model), _logits(AutoModelForCausalLM.from_pretrained(family[1])), rtol=0, atol=1e-4
    )


def test_a_resized_vocabulary_saves_embeddings_whole_and_the_card_says_so(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(family[1])
    model.resize_token_embeddings(260)
    model.save_pretrained(tmp_path / "resized")
    result = extract_lora(
        str(family[0]), str(tmp_path / "resized"), tmp_path / "out", ExtractOptions(rank=4, embed_lora=True)
    )
    assert {"embed_tokens", "lm_head"} <= set(result.plan.config["modules_to_save"])
    assert any("vocabularies differ" in w.message for w in result.plan.warnings)
    assert "model.resize_token_embeddings(260)" in (result.out_dir / "README.md").read_text()


def test_randomized_svd_is_close_to_exact(family, tmp_path):
    exact = extract_lora(str(family[0]), str(family[1]), tmp_path / "exact", ExtractOptions(rank=8)).errors
    randomized = extract_lora(
        str(family[0]), str(family[1]), tmp_path / "random", ExtractOptions(rank=8, svd="randomized")
    ).errors
    for module, error in exact.items():
        assert error - 1e-6 <= randomized[module] <= error * 1.02, module


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(rank=0), "rank 0 is not a positive whole number"),
        (dict(rank=4, rank_energy=1.5), r"rank_energy 1.5 is not in \(0, 1\]"),
        (dict(rank=4, sv_epsilon=-1.0), "sv_epsilon -1.0 is negative"),
        (dict(rank=4, include=("(",)), "'\\(' is not a regular expression"),
        (dict(rank=4, svd="fast"), "svd 'fast' is not"),
    ],
)
def test_bad_options_are_refused_before_reading(family, options, message):
    with pytest.raises(RecipeError, match=message):
        plan_extraction(str(family[0]), str(family[1]), ExtractOptions(**options))


def test_models_that_do_not_fit_are_refused_with_every_problem(family, tmp_path):
    other = make_tiny_llama(tmp_path / "other", hidden=32)
    with pytest.raises(PlanError) as caught:
        plan_extraction(str(family[0]), str(other), ExtractOptions(rank=4))
    assert "model.layers.0.self_attn.q_proj.weight: the fine-tune has [32, 32], the base has [64, 64]" in str(
        caught.value
    )
    adapter = make_lora(family[0], tmp_path / "a", r=2, lora_alpha=2, target_modules=["q_proj"])
    with pytest.raises(RecipeError, match="has a LoRA adapter"):
        plan_extraction(f"{family[0]}+{adapter}", str(family[1]), ExtractOptions(rank=4))
    assert plan_extraction(
        str(family[0]), f"{family[0]}+{adapter}", ExtractOptions(rank=4)
    ).jobs  # a fine-tune may be one


def test_extraction_files_and_the_cli(family, tmp_path, capsys):
    from mergehub.interfaces.cli import main

    spec = tmp_path / "extract.yml"
    spec.write_text(
        f"extract_lora:\n  base: {family[0]}\n  model: {family[1]}\n  rank: 6\n"
        "  rank_energy: '0.9'\n  exclude: ['mlp']\n"
    )
    parsed = parse_extraction(spec.read_text())
    assert parsed.options == ExtractOptions(rank=6, rank_energy=0.9, exclude=("mlp",))
    assert parse_extraction(parsed.to_yaml()) == parsed
    assert main(["extract-lora", "--from", str(spec), str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (
        "Extracted 16 modules as LoRA" in out
        and (tmp_path / "out" / "mergehub_extract.yml").read_text() == spec.read_text()
    )
    assert main(["extract-lora", "--base", str(family[0]), "--model", str(family[1]), "--rank", "4", "--dry-run"]) == 0
    assert "Plan: LoRA extraction from 2 models" in capsys.readouterr().out
    spec.write_text(f"extract_lora:\n  base: {family[0]}\n  model: {family[1]}\n  rank: 6\n  ranks: 3\n")
    assert main(["extract-lora", "--from", str(spec), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert (
        "extract_lora.ranks: `ranks` is not an option of extract_lora" in err and "hint: Keys: base, model, rank" in err
    )
    assert main(["extract-lora", "--base", str(family[0]), str(tmp_path / "x")]) == 1
    assert "extract-lora needs --model, --rank" in capsys.readouterr().err


def test_hub_extraction_is_pinned_pushed_and_carded(family, hub, tmp_path, capsys):
    from huggingface_hub import HfApi

    from mergehub.interfaces.cli import main

    base_card = b"---\nlicense: apache-2.0\n---\n# Base\n"
    tuned_card = b"---\nlicense: apache-2.0\nbase_model: org/base\nbase_model_relation: finetune\n---\n# Tuned\n"
    base_sha = hub.add_repo(
        "org/base", {**{p.name: p.read_bytes() for p in family[0].iterdir()}, "README.md": base_card}
    )
    tuned_sha = hub.add_repo(
        "org/tuned", {**{p.name: p.read_bytes() for p in family[1].iterdir()}, "README.md": tuned_card}
    )
    plan = plan_extraction("org/base", "org/tuned", ExtractOptions(rank=4))
    assert [m.revision for m in plan.models] == [base_sha, tuned_sha]
    # the fine-tune is read whole, so it is verified in transit; the base's norms and embeddings are not needed
    assert [(f.model, f.verified, f.reason) for f in plan.input_files] == [
        ("org/base", False, "read in part"),
        ("org/tuned", True, ""),
    ]
    assert (
        main(
            [
                "extract-lora",
                "--base",
                "org/base",
                "--model",
                "org/tuned",
                "--rank",
                "4",
                "--push",
                "tuned-lora",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "Pushed to alice/tuned-lora" in capsys.readouterr().out
    files = set(HfApi().list_repo_files("alice/tuned-lora"))
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "mergehub_extract.yml"} <= files
    config = json.loads(Path(HfApi().hf_hub_download("alice/tuned-lora", "adapter_config.json")).read_text())
    assert config["base_model_name_or_path"] == "org/base" and config["revision"] == base_sha
    card = Path(HfApi().hf_hub_download("alice/tuned-lora", "README.md")).read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert (
        front["base_model"] == "org/base"
        and front["base_model_relation"] == "adapter"
        and front["license"] == "apache-2.0"
    )
    assert front["mergehub"]["parents"] == {"org/base": base_sha, "org/tuned": tuned_sha}
    assert "|extracted|" in card and "|adapter|" in card and "| `model.layers.0.self_attn.q_proj` | 4 |" in card
    from mergehub.api import lineage

    graph = lineage("alice/tuned-lora")
    assert {(e.parent, e.relation) for e in graph.parents("alice/tuned-lora")} == {
        ("org/base", "adapter"),
        ("org/tuned", "extracted"),
    }
    assert ("org/base", "finetune") in {(e.parent, e.relation) for e in graph.parents("org/tuned")}
