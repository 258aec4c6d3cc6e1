"""Memory regression: a merge's peak RSS above the import of mergehub stays within its plan's estimate.

Each merge runs in a fresh subprocess that records `ru_maxrss` after importing mergehub.api and
after the merge; the difference may exceed `Plan.peak_memory_bytes` by at most 25 %. The models
are generated Llamas of about 50M parameters in bfloat16, large enough that tensors, not the
runtime, set the peak. Not a timing test: the figures hold on a busy machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

TOLERANCE = 1.25
HIDDEN, INTERMEDIATE, LAYERS, VOCAB = 512, 1376, 4, 32000

# Linux carries a process's peak RSS across fork and exec, so a child of this large pytest process would report
# at least pytest's: the merge runs under a small launcher, which it inherits instead.
_LAUNCH = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:], timeout=300).returncode)"
_MEASURE = """\
import json, resource, sys
import mergehub.api as api
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
baseline = peak()
plan = api.plan_merge(sys.argv[1])
api.run_merge(plan, sys.argv[2])
print(json.dumps({"above": peak() - baseline, "estimate": plan.peak_memory_bytes}))
"""


def _shapes() -> list[tuple[str, tuple[int, ...]]]:
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes += [(p + f"self_attn.{n}_proj.weight", (HIDDEN, HIDDEN)) for n in "qkvo"]
        shapes += [(p + f"mlp.{n}_proj.weight", (INTERMEDIATE, HIDDEN)) for n in ("gate", "up")]
        shapes += [(p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE))]
        shapes += [(p + n, (HIDDEN,)) for n in ("input_layernorm.weight", "post_attention_layernorm.weight")]
    return shapes + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


@pytest.fixture(scope="module")
def llamas(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A bf16 base of about 50M parameters and two fine-tunes of it (base + 1 % noise)."""
    from transformers import LlamaConfig

    root = tmp_path_factory.mktemp("llama50m")
    generator = torch.Generator().manual_seed(0)
    base = {name: torch.randn(shape, generator=generator).mul_(0.02) for name, shape in _shapes()}
    paths = []
    for index in range(3):
        directory = root / f"model-{index}"
        directory.mkdir()
        noise = 0.0002 * index
        tensors = {n: t.add(torch.randn(t.shape, generator=generator), alpha=noise).bfloat16() for n, t in base.items()}
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=INTERMEDIATE,
            num_hidden_layers=LAYERS,
            num_attention_heads=8,
            num_key_value_heads=8,
            tie_word_embeddings=False,
            torch_dtype="bfloat16",
        )
        config.save_pretrained(directory)
        paths.append(directory)
    assert 45e6 < sum(t.numel() for t in base.values()) < 55e6
    return paths


@pytest.mark.parametrize("method", ["linear", "ties", "slerp"])
def test_peak_memory_stays_within_the_plans_estimate(llamas: list[Path], tmp_path: Path, method: str) -> None:
    base, first, second = (str(p) for p in llamas)
    if method == "slerp":
        recipe = {"merge_method": "slerp", "base_model": base, "models": [{"model": base}, {"model": first}]}
        recipe["parameters"] = {"t": 0.4}
    else:
        models = [{"model": m, "parameters": {"weight": w, "density": 0.5}} for m, w in ((first, 0.6), (second, 0.4))]
        if method == "linear":
            models.append({"model": base, "parameters": {"weight": 0.2}})
        recipe = {"merge_method": method, "base_model": base, "models": models}
    recipe["dtype"] = "bfloat16"
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    measure = [sys.executable, "-c", _MEASURE, str(path), str(tmp_path / "out")]
    done = subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCH, *measure], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.splitlines()[-1])
    above, estimate = measured["above"], measured["estimate"]
    print(f"{method}: {above / 2**20:.0f} MiB above the import, estimate {estimate / 2**20:.0f} MiB")
    assert above <= TOLERANCE * estimate, f"{method}: peak {above / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB"
