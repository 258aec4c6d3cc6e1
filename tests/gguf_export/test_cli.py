"""`mergehub gguf` and `mergehub merge --gguf`: types checked first, unsupported models refused with the list."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mergehub.errors import GGUFError
from mergehub.gguf.types import parse_types
from mergehub.interfaces.cli import main
from tests.gguf_export.models import make_family_model, tokenizer_for

pytest.importorskip("gguf")


def test_types_are_parsed_and_k_quants_refused_with_the_offer():
    assert parse_types("f16, Q8_0,f16,q4_0") == ("F16", "Q8_0", "Q4_0")
    with pytest.raises(GGUFError) as error:
        parse_types("q4_k_m")
    assert (
        "llama.cpp's quantizer" in error.value.message
        and "q8_0" in error.value.hint
        and "llama-quantize" in error.value.hint
    )
    with pytest.raises(GGUFError, match="not a GGUF type"):
        parse_types("f17")


def test_gguf_command_converts_a_local_model(tmp_path, capsys):
    model = make_family_model("llama", tmp_path / "tiny", seed=0, tokenizer=tokenizer_for("llama"))
    assert main(["gguf", str(model), str(tmp_path / "out"), "--types", "q8_0,q4_0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "tiny-Q8_0.gguf" in out and "tiny-Q4_0.gguf" in out
    import gguf

    reader = gguf.GGUFReader(tmp_path / "out" / "tiny-Q4_0.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == "Q4_0" and types["token_embd.weight"] == "Q4_0"
    assert types["output.weight"] == "Q8_0"  # llama-quantize's Q6_K, which gguf-py cannot write
    assert not any(p.name.startswith(".") for p in (tmp_path).iterdir())  # no staging left behind


def test_unsupported_architecture_is_refused_with_the_list(family, tmp_path, capsys):
    import json

    config = json.loads((family[0] / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # a tokenizer-less tiny Llama: refused for its tokenizer
    assert main(["gguf", str(family[0]), str(tmp_path / "out"), "--types", "f16"]) == 1
    assert "no tokenizer files" in capsys.readouterr().err
    gpt2 = tmp_path / "gpt2"
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)).save_pretrained(gpt2)
    assert main(["gguf", str(gpt2), str(tmp_path / "out2"), "--types", "f16"]) == 1
    err = capsys.readouterr().err
    assert "does not write GGUF for GPT2LMHeadModel" in err and "Qwen2ForCausalLM" in err and "Phi3ForCausalLM" in err
    assert not (tmp_path / "out2").exists()


def test_merge_refuses_a_k_quant_before_merging(family, write_recipe, tmp_path, capsys):
    recipe = write_recipe(
        {"merge_method": "linear", "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in family[:2]]}
    )
    assert main(["merge", str(recipe), str(tmp_path / "out"), "--gguf", "q4_k_m", "--no-progress"]) == 1
    assert "llama.cpp's quantizer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_the_gguf_package_the_command_says_how_to_install(tmp_path):
    code = (
        "import sys; sys.modules['gguf'] = None; from mergehub.interfaces.cli import main; "
        "sys.exit(main(['gguf', 'x', 'y', '--types', 'f16']))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1 and "pip install 'mergehub[gguf]'" in run.stderr


def test_overwrite_replaces_a_previous_export_but_never_the_current_directory(tmp_path, capsys, monkeypatch):
    model = make_family_model("llama", tmp_path / "tiny", seed=0, tokenizer=tokenizer_for("llama"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("precious")
    monkeypatch.chdir(work)
    assert main(["gguf", str(model), ".", "--types", "f16", "--overwrite", "--no-progress"]) == 1
    assert "current directory" in capsys.readouterr().err and (work / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]
    assert main(["gguf", str(model), str(tmp_path / "out"), "--types", "f16", "--no-progress"]) == 0
    assert main(["gguf", str(model), str(tmp_path / "out"), "--types", "q8_0", "--overwrite", "--no-progress"]) == 0
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".gguf", ".md"]
