"""Merges across vocabularies: rows re-indexed by token, the output tokenizer, config and chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mergehub import PlanError, run_merge
from mergehub.demo import make_tiny_llama
from tests.helpers import CHATML, WORDS, load_tensors, make_tokenizer


def _with_tokenizer(directory: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


@pytest.fixture(scope="module")
def chat_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A base with 50 tokens, and a model with the same 50 plus two ChatML tokens (52 rows)."""
    root = tmp_path_factory.mktemp("vocab")
    base = _with_tokenizer(make_tiny_llama(root / "base", vocab=50, seed=0), make_tokenizer(WORDS))
    chat = _with_tokenizer(make_tiny_llama(root / "chat", vocab=52, seed=1), make_tokenizer(WORDS, tuple(CHATML)))
    return base, chat


def _linear(models: list[Path], **extra) -> dict:
    return {
        "merge_method": "linear",
        "base_model": str(models[0]),
        "models": [{"model": str(m), "parameters": {"weight": 1}} for m in models],
        **extra,
    }


def test_different_vocabularies_need_a_tokenizer_setting(chat_pair, write_recipe):
    with pytest.raises(
        PlanError, match="model.embed_tokens.weight: shapes differ .*vocabularies differ: set `tokenizer_source`"
    ):
        run_merge(write_recipe(_linear(list(chat_pair))), "unused")


def test_union_keeps_added_tokens_from_the_model_that_has_them(chat_pair, write_recipe, tmp_path):
    base, chat = chat_pair
    run_merge(write_recipe(_linear([base, chat], tokenizer_source="union")), tmp_path / "out")
    a, b, merged = load_tensors(base), load_tensors(chat), load_tensors(tmp_path / "out")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[name].shape == (52, 64)
        torch.testing.assert_close(merged[name][:50], (a[name] + b[name][:50]) / 2, rtol=0, atol=1e-6)
        # only `chat` has the ChatML rows, so both inputs take them: the merge keeps them as they are
        torch.testing.assert_close(merged[name][50:], b[name][50:], rtol=0, atol=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.convert_tokens_to_ids(CHATML) == [50, 51]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 52
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.isfinite(model(torch.tensor([[1, 50, 7, 51]])).logits).all()


def test_base_vocabulary_drops_other_tokens(chat_pair, write_recipe, tmp_path):
    base, chat = chat_pair
    run_merge(write_recipe(_linear([base, chat], tokenizer_source="base")), tmp_path / "out")
    merged = load_tensors(tmp_path / "out")
    assert merged["model.embed_tokens.weight"].shape == (50, 64)
    assert CHATML[0] not in AutoTokenizer.from_pretrained(tmp_path / "out").get_vocab()


def test_pad_to_multiple_of(chat_pair, write_recipe, tmp_path):
    base, chat = chat_pair
    run_merge(
        write_recipe(_linear([base, chat], tokenizer={"source": "union", "pad_to_multiple_of": 64})), tmp_path / "out"
    )
    assert load_tensors(tmp_path / "out")["model.embed_tokens.weight"].shape == (64, 64)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 64
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").model.embed_tokens.weight.shape == (64, 64)


def test_tokens_override_fills_a_missing_row_with_zeros(chat_pair, write_recipe, tmp_path):
    base, chat = chat_pair
    tokens = {CHATML[0]: {"source": {"kind": "zero"}}}
    run_merge(write_recipe(_linear([base, chat], tokenizer={"source": "union", "tokens": tokens})), tmp_path / "out")
    b, merged = load_tensors(chat), load_tensors(tmp_path / "out")
    # base lacks the token and takes zeros; chat keeps its own row: the average is half of chat's row
    torch.testing.assert_close(
        merged["model.embed_tokens.weight"][50], b["model.embed_tokens.weight"][50] / 2, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("template", ["chatml", "auto"])
def test_chat_templates(chat_pair, write_recipe, tmp_path, template):
    base, chat = chat_pair
    run_merge(write_recipe(_linear([base, chat], tokenizer_source="union", chat_template=template)), tmp_path / "out")
    written = tmp_path / "out" / "chat_template.jinja"
    if template == "chatml":
        assert "<|im_start|>" in written.read_text()
    else:
        assert not written.exists()  # no input model has a template: the tokenizer's own (none) is kept
