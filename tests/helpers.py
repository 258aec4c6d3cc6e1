"""Small helpers for tests: load a model directory's tensors."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors model directory, sharded or not."""
    index = directory / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(directory / file))
    return tensors


WORDS = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(46)]  # 50 tokens
CHATML = ["<|im_start|>", "<|im_end|>"]


def make_tokenizer(
    words: list[str], added: tuple[str, ...] = (), *, bpe: bool = False, template: str | None = None
) -> dict[str, bytes]:
    """The files save_pretrained writes for a small WordLevel (or BPE) tokenizer with `added` special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AddedToken, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    if bpe:
        merges = [(a, b) for a, b in [("w", "1"), ("w", "2")] if a + b in vocab]
        model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>")
    else:
        model = models.WordLevel(vocab, unk_token="<unk>")
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    if added:
        fast.add_tokens([AddedToken(a, special=True, normalized=False) for a in added])
    if template:
        fast.chat_template = template
    with tempfile.TemporaryDirectory() as tmp:
        fast.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


def make_lora(
    base: Path,
    out: Path,
    *,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    model_class: str = "AutoModelForCausalLM",
    **config,
) -> Path:
    """A PEFT LoRA adapter for the model at `base`, saved by peft itself into `out`, with random (non-zero) A and B.

    `config` goes to `peft.LoraConfig` (r, lora_alpha, target_modules, use_rslora, rank_pattern, ...); tensors in
    `modules_to_save` are perturbed too, so that replacing them shows.
    """
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = getattr(transformers, model_class).from_pretrained(base, dtype=dtype or "auto")
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "modules_to_save" in name or "lora_B" in name and parameter.ndim == 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator).to(parameter.dtype) * 0.1)
    peft_model.save_pretrained(out)
    return out


def peft_merged(
    base: Path, adapter: Path, *, dtype: torch.dtype | str = "auto", model_class: str = "AutoModelForCausalLM"
) -> dict[str, torch.Tensor]:
    """The state dict peft's `merge_and_unload` gives for `base` + `adapter` (the reference for merged tensors)."""
    import transformers
    from peft import PeftModel

    model = getattr(transformers, model_class).from_pretrained(base, dtype=dtype)
    return {
        k: v.detach().clone()
        for k, v in PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict().items()
    }
