"""Merges written as GGUF in the same pass load with transformers' GGUF loader and match the safetensors merge."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.gguf_export.models import SAMPLE
from tests.helpers import load_tensors

gguf = pytest.importorskip("gguf")

F16_TOLERANCE = 1e-2
Q8_0_TOLERANCE = 5e-2  # measured 1.2e-2 to 1.9e-2 on these tiny random models (see the test output)


def _logit_error(result, filename: str) -> float:
    reference = AutoModelForCausalLM.from_pretrained(result.out_dir, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(result.gguf.out_dir, gguf_file=filename, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(result.out_dir)(SAMPLE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = reference(ids).logits, loaded(ids).logits
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3"])
def test_gguf_files_give_the_merges_logits(gguf_merges, family: str):
    result = gguf_merges(family)
    errors = {f.file_type: _logit_error(result, f.filename) for f in result.gguf.files}
    print(f"{family}: relative logit error {errors}")
    assert errors["F16"] <= F16_TOLERANCE
    assert errors["Q8_0"] <= Q8_0_TOLERANCE
    assert errors["Q8_0"] > errors["F16"]  # the quantized file really is quantized


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_the_tokenizer_round_trips(gguf_merges, family: str):
    result = gguf_merges(family)
    expected = AutoTokenizer.from_pretrained(result.out_dir)(SAMPLE)["input_ids"]
    for file in result.gguf.files:
        assert (
            AutoTokenizer.from_pretrained(result.gguf.out_dir, gguf_file=file.filename)(SAMPLE)["input_ids"] == expected
        )


@pytest.mark.parametrize(
    ("family", "arch", "model"),
    [("llama", "llama", "llama"), ("qwen2", "qwen2", "gpt2"), ("gemma3", "gemma3", "llama"), ("phi3", "phi3", "llama")],
)
def test_metadata_names_the_architecture_and_tokenizer(gguf_merges, family: str, arch: str, model: str):
    result = gguf_merges(family)
    reader = gguf.GGUFReader(result.gguf.out_dir / result.gguf.files[0].filename)
    fields = {
        name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.token")
    }
    assert fields["general.architecture"] == arch
    assert fields["general.name"] == "merged"
    assert fields[f"{arch}.block_count"] == 2 and fields[f"{arch}.embedding_length"] == 64
    assert fields["tokenizer.ggml.model"] == model
    assert "<|im_start|>" in fields["tokenizer.chat_template"]
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    if model == "gpt2":
        assert fields["tokenizer.ggml.pre"] == "qwen2"  # recognised by its split regex
        assert reader.fields["tokenizer.ggml.merges"].contents()


def test_tensor_types_follow_llama_cpp(gguf_merges):
    result = gguf_merges("qwen2")
    reader = gguf.GGUFReader(result.gguf.out_dir / "merged-Q8_0.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert (
        types["blk.0.attn_q.weight"] == "Q8_0"
        and types["token_embd.weight"] == "Q8_0"
        and types["output.weight"] == "Q8_0"
    )
    assert (
        types["blk.0.attn_norm.weight"] == "F32"
        and types["blk.0.attn_q.bias"] == "F32"
        and types["output_norm.weight"] == "F32"
    )


def test_gemma_norms_are_stored_plus_one(gguf_merges):
    result = gguf_merges("gemma2")
    reader = gguf.GGUFReader(result.gguf.out_dir / "merged-F16.gguf")
    stored = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
    merged = load_tensors(result.out_dir)["model.layers.0.input_layernorm.weight"]
    assert torch.allclose(torch.from_numpy(stored.data.copy()), merged + 1)


def test_the_card_and_the_summary(gguf_merges):
    result = gguf_merges("llama")
    card = (result.gguf.out_dir / "README.md").read_text()
    assert "library_name: gguf" in card and "base_model_relation: quantized" not in card  # a local merge: no Hub base
    for file in result.gguf.files:
        assert file.sha256 in card and file.filename in card
    assert "llama-cli -hf merged-GGUF:Q8_0" in card and "ollama run hf.co/merged-GGUF:Q8_0" in card
    assert "--gguf f16,q8_0" in card
    assert "merged-Q8_0.gguf" in result.summary()
    assert sorted(p.name for p in result.gguf.out_dir.iterdir()) == ["README.md", "merged-F16.gguf", "merged-Q8_0.gguf"]
