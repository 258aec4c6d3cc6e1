"""Tiny Llama and Qwen families with tokenizers, for MoE assembly."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergehub.demo import make_family
from tests.helpers import WORDS, make_tokenizer


def with_tokenizer(paths: list[Path]) -> list[Path]:
    """Write a small tokenizer (BOS `<s>`) into each model directory."""
    files = make_tokenizer(WORDS)
    for path in paths:
        for name, data in files.items():
            (path / name).write_bytes(data)
    return paths


@pytest.fixture(scope="session")
def experts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A float32 Llama base (4 layers, hidden 64) with a tokenizer, and four fine-tunes of it."""
    return with_tokenizer(make_family(tmp_path_factory.mktemp("moe-family"), count=5))


@pytest.fixture
def prompt_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh prompt-state cache directory (HF_HOME under the test's tmp_path)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    return tmp_path / "hf_home" / "mergehub" / "prompt-states"


def make_tiny(directory: Path, kind: str, *, seed: int = 0, base: Path | None = None, noise: float = 0.02) -> Path:
    """A tiny random Qwen2 or Qwen3 (4 layers, hidden 64) with the small tokenizer; with `base`, base + seeded noise."""
    import torch
    import transformers

    classes = {
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }
    config_class, model_class = classes[kind]
    config = config_class(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    if base is not None:
        model.load_state_dict(model_class.from_pretrained(base).state_dict())
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * noise)
    model.save_pretrained(directory)
    return with_tokenizer([directory])[0]


def make_tiny_family(root: Path, kind: str, count: int) -> list[Path]:
    base = make_tiny(root / "base", kind)
    return [base] + [make_tiny(root / f"finetune-{i}", kind, seed=i, base=base) for i in range(1, count)]


@pytest.fixture(scope="session")
def qwen2_experts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A Qwen2 base with a tokenizer and four fine-tunes of it."""
    return make_tiny_family(tmp_path_factory.mktemp("qwen2"), "qwen2", 5)


@pytest.fixture(scope="session")
def qwen3_experts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A Qwen3 base with a tokenizer and three fine-tunes of it."""
    return make_tiny_family(tmp_path_factory.mktemp("qwen3"), "qwen3", 4)
