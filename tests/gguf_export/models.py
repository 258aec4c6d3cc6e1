"""Tiny models of the GGUF families, each with a real tokenizer (byte-level BPE or SentencePiece) trained here."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import torch
import transformers

CORPUS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Merging models is cheap: llama.cpp reads GGUF files, Ollama runs them.",
    "hello world 123 4567 3.14 -- (parentheses) 'quotes' \"double\" <tags>",
    "Les modèles fusionnés parlent aussi français. Ünïcödé ñ 你好",
] * 40
SAMPLE = "The capital of France is Paris. Hello world 123!"
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
VOCAB = 320


def bpe_tokenizer_files(vocab: int = VOCAB) -> dict[str, bytes]:
    """A byte-level BPE tokenizer split as Qwen2's (digits one by one), with ChatML specials and a template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return _saved(fast)


def spm_tokenizer_files(vocab: int = VOCAB) -> dict[str, bytes]:
    """A SentencePiece tokenizer as Llama 2, Mistral and Gemma repos ship it: tokenizer.model (byte fallback) +
    tokenizer.json."""
    import sentencepiece
    from transformers import AutoTokenizer

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=vocab,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(model.getvalue())
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(config))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    tokenizer.chat_template = CHAT_TEMPLATE
    return {**_saved(tokenizer), "tokenizer.model": model.getvalue()}


def _saved(tokenizer) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
)
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=False), "spm"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(tie_word_embeddings=False), "bpe"),
    "qwen3": (
        "Qwen3ForCausalLM",
        "Qwen3Config",
        dict(tie_word_embeddings=True, head_dim=128),
        "bpe",
    ),  # the GGUF loader assumes 128
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(head_dim=16, sliding_window=16), "spm"),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", dict(head_dim=16, sliding_window=16), "spm"),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(tie_word_embeddings=False, pad_token_id=0), "spm"),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(tie_word_embeddings=False), "spm"),
}


def make_family_model(
    family: str,
    directory: Path,
    *,
    seed: int,
    base: Path | None = None,
    noise: float = 0.02,
    tokenizer: dict[str, bytes] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A tiny model of `family` with its tokenizer; with `base`, base + seeded noise (a "fine-tune")."""
    model_class, config_class, extra, _ = FAMILIES[family]
    config = getattr(transformers, config_class)(vocab_size=VOCAB, **{**_TEXT, **extra})
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if base is not None:
            model.load_state_dict(getattr(transformers, model_class).from_pretrained(base).state_dict())
        for parameter in model.parameters():
            scale = noise if base is not None else 0.05
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    model.to(dtype).save_pretrained(directory)
    for name, data in (tokenizer or {}).items():
        (directory / name).write_bytes(data)
    return directory


def tokenizer_for(family: str) -> dict[str, bytes]:
    """The kind of tokenizer the family ships with."""
    return spm_tokenizer_files() if FAMILIES[family][3] == "spm" else bpe_tokenizer_files()
