"""Tiny random Llama models and a demo merge, for `make demo`, the tests and benchmarks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

__all__ = ["make_tiny_llama", "make_family", "DEMO_RECIPE"]

DEMO_RECIPE = """\
# A SLERP of two fine-tunes of one base, attention and MLP interpolated on opposite gradients.
merge_method: slerp
base_model: {base}
slices:
  - sources:
      - model: {base}
        layer_range: [0, 4]
      - model: {other}
        layer_range: [0, 4]
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""


def make_tiny_llama(
    directory: str | Path,
    *,
    seed: int = 0,
    base: str | Path | None = None,
    noise: float = 0.02,
    layers: int = 4,
    hidden: int = 64,
    vocab: int = 256,
    dtype: torch.dtype = torch.float32,
    tie_word_embeddings: bool = False,
    shard_size: str = "5GB",
) -> Path:
    """Save a tiny random Llama to `directory`; with `base`, a "fine-tune" of it: base + seeded noise."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if base is not None:
        model.load_state_dict(LlamaForCausalLM.from_pretrained(base).state_dict())
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * noise)
    model.to(dtype)
    model.generation_config = GenerationConfig(max_new_tokens=8, do_sample=False)
    model.save_pretrained(directory, max_shard_size=shard_size)
    return directory


def make_family(root: str | Path, *, count: int = 3, **kwargs) -> list[Path]:
    """A base model and `count - 1` fine-tunes of it under `root`."""
    root = Path(root)
    base = make_tiny_llama(root / "base", seed=0, **kwargs)
    return [base] + [make_tiny_llama(root / f"finetune-{i}", seed=i, base=base, **kwargs) for i in range(1, count)]


def main(argv: list[str] | None = None) -> int:
    """Generate tiny models and a demo recipe in a directory, then merge them with the CLI."""
    parser = argparse.ArgumentParser(description="Run mergehub's demo merge on generated tiny models.")
    parser.add_argument("workdir", nargs="?", default="demo-out")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    base, other = make_family(workdir / "models", count=2)
    recipe = workdir / "demo.yml"
    recipe.write_text(DEMO_RECIPE.format(base=base, other=other))
    print(f"Tiny models in {workdir / 'models'}; recipe {recipe}")
    from mergehub.interfaces.cli import main as cli

    return cli(["merge", str(recipe), str(workdir / "merged"), "--overwrite", "--out-shard-size", "200KB"])


if __name__ == "__main__":
    sys.exit(main())
