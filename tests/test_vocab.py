"""Vocabularies: output tokenizers, row maps, re-indexed embeddings, `tokens:` and chat templates, against mergekit."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from mergehub.errors import MergeMethodError, RecipeError, SourceError
from mergehub.vocab import (
    BUILTIN_CHAT_TEMPLATES,
    TokenOverride,
    VocabAlignment,
    align_rows,
    align_vocabularies,
    build_output_tokenizer,
    config_updates,
    model_chat_template,
    padded_rows,
    resolve_chat_template,
    row_map,
    token_overrides,
    vocab_of,
)
from tests.helpers import CHATML, WORDS, make_tokenizer

TEMPLATE_A = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
TEMPLATE_B = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def files() -> dict[str, dict[str, bytes]]:
    """base (50 tokens), chat (base + ChatML added tokens), other (40 of base's + x1, x2 + <tool>)."""
    return {
        "org/base": make_tokenizer(WORDS),
        "org/chat": make_tokenizer(WORDS, tuple(CHATML)),
        "org/other": make_tokenizer(WORDS[:40] + ["x1", "x2"], ("<tool>",)),
    }


ROWS = {"org/base": 50, "org/chat": 52, "org/other": 43}


def test_vocab_of_includes_added_tokens(files):
    vocab = vocab_of(files["org/chat"])
    assert len(vocab) == 52 and vocab["<|im_start|>"] == 50 and vocab["<|im_end|>"] == 51 and vocab["w0"] == 4


def test_base_source_with_same_vocab_keeps_files_verbatim(files):
    out = build_output_tokenizer("base", "org/base", files, vocab_sizes=ROWS)
    assert out.files == files["org/base"] and out.size == 50 and out.vocab == vocab_of(files["org/base"])
    assert out.special_ids == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "unk_token_id": 0}
    assert row_map(out.vocab, 50, out.inputs["org/base"], 50) == tuple(range(50))
    assert out.inputs["org/chat"]["<|im_end|>"] == 51


def test_model_source_and_added_tokens(files):
    out = build_output_tokenizer("org/chat", "org/base", files, ["<extra>", "w3", "<|im_end|>"])
    assert out.size == 53 and out.vocab["<extra>"] == 52 and out.vocab["w3"] == 7
    loaded = vocab_of(out.files)
    assert loaded == out.vocab
    assert "is_local" not in json.loads(out.files["tokenizer_config.json"])
    with pytest.raises(RecipeError, match="not one of the recipe's models"):
        build_output_tokenizer("org/nope", "org/base", files)


def test_union_adds_every_models_tokens(files):
    out = build_output_tokenizer("union", "org/base", files, ["<extra>"], vocab_sizes=ROWS)
    expected = WORDS + ["x1", "x2", "<|im_start|>", "<|im_end|>", "<tool>", "<extra>"]
    assert out.vocab == {t: i for i, t in enumerate(expected)} and out.size == 56
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in out.files.items():
            (Path(tmp) / name).write_bytes(data)
        tok = AutoTokenizer.from_pretrained(tmp)
    assert tok("<|im_start|> w1 x2", add_special_tokens=False)["input_ids"] == [52, 5, 51]
    assert tok.added_tokens_decoder[52].special and not tok.added_tokens_decoder[50].special
    # a model's tokens beyond its embedding rows are not taken
    cut = build_output_tokenizer("union", "org/base", files, vocab_sizes={**ROWS, "org/other": 42})
    assert "<tool>" not in cut.vocab


def test_union_of_identical_tokenizers_keeps_base_files(files):
    same = {"org/base": files["org/base"], "org/b2": files["org/base"], "org/none": {}}
    out = build_output_tokenizer("union", None, same)
    assert out.files == files["org/base"] and out.inputs["org/none"] == out.inputs["org/base"]


def test_base_tokenizer_is_cut_to_its_rows():
    bpe = make_tokenizer(WORDS + ["w", "1", "2"], bpe=True)  # w1 = w + 1 is a merge over tokens 50..52
    out = build_output_tokenizer("base", "a", {"a": bpe}, vocab_sizes={"a": 50})
    assert out.size == 50 and set(out.vocab) == set(WORDS)
    assert json.loads(out.files["tokenizer.json"])["model"]["merges"] == []
    with pytest.raises(SourceError, match="no tokenizer files"):
        build_output_tokenizer("base", "a", {"a": {}})


def test_padded_rows_and_config_updates(files):
    assert padded_rows(52, 64) == 64 and padded_rows(64, 64) == 64 and padded_rows(52, None) == 52
    out = build_output_tokenizer("org/chat", "org/base", files)
    config = {"vocab_size": 50, "bos_token_id": 1, "eos_token_id": 7, "pad_token_id": [2, 3]}
    assert config_updates(out, 64, config) == {"vocab_size": 64, "eos_token_id": 2}
    assert config_updates(out, 52) == {"vocab_size": 52}


def test_row_map_marks_missing_and_padding_rows():
    out_vocab = {"a": 0, "b": 1, "c": 2}
    assert row_map(out_vocab, 5, {"c": 0, "a": 3, "b": 9}, 5) == (3, -1, 0, -1, -1)


# --- tokens: overrides ---------------------------------------------------------------------------------------


def test_token_overrides_resolve_sources(files):
    out = build_output_tokenizer("union", "org/base", files, ["<extra>"], vocab_sizes=ROWS)
    tokens = {
        "<|im_start|>": {"source": {"kind": "model_token", "model": "org/chat", "token": "<s>"}},
        "w3": {"source": {"kind": "zero"}, "force": True},
        "x1": {"source": "org/other"},
        "<extra>": None,
        "<|im_end|>": {"source": {"kind": "model_token", "model": "org/other", "token_id": 7}},
    }
    got = {o.token: o for o in token_overrides(tokens, out, ROWS)}
    assert got["<|im_start|>"] == TokenOverride("<|im_start|>", 52, "row", "org/chat", 1)
    assert got["w3"] == TokenOverride("w3", 7, "zero", force=True)
    assert got["x1"] == TokenOverride("x1", 50, "row", "org/other", 40)
    assert got["<extra>"] == TokenOverride("<extra>", 55, "auto")
    assert got["<|im_end|>"].source_row == 7


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"source": "org/nope"}, "not one of the recipe's models"),
        ({"source": "org/other"}, "has no token"),
        ({"source": {"kind": "model_token", "model": "org/other", "token_id": 43}}, "has no token"),
        ({"source": {"kind": "model_token", "model": "org/other"}}, "not understood"),
        ({"source": {"kind": "mean"}}, "not understood"),
        ({"force": "yes"}, "malformed"),
        ({"weight": 1}, "malformed"),
    ],
)
def test_token_overrides_reject_bad_entries(files, entry, match):
    out = build_output_tokenizer("union", "org/base", files, vocab_sizes=ROWS)
    with pytest.raises(RecipeError, match=match):
        token_overrides({"w45": entry}, out, ROWS)


# --- align_rows against mergekit's PermutedVocabulary ----------------------------------------------------------


def _mergekit_align(out, alignment, tensors, models, base, tokens, pad, axis=0):
    from mergekit.common import ModelReference
    from mergekit.tokenizer.build import TokenizerInfo
    from mergekit.tokenizer.config import TokenEmbeddingConfig
    from mergekit.tokenizer.embed import PermutedVocabulary

    refs = {m: ModelReference.parse(m) for m in models}

    class Vocab:
        def get_vocab(self):
            return out.vocab

    info = TokenizerInfo.model_construct(
        tokenizer=Vocab(),
        permutations={refs[m]: dict(enumerate(alignment.maps[m][: out.size])) for m in models},
        original_vocabs={refs[m]: out.inputs[m] for m in models},
    )
    cfg = {}
    for token, entry in (tokens or {}).items():
        entry = dict(entry or {})
        src = entry.get("source")
        if isinstance(src, str):
            src = refs[src]
        elif isinstance(src, dict) and "model" in src:
            src = {**src, "model": refs[src["model"]]}
        cfg[token] = TokenEmbeddingConfig.model_validate({**entry, "source": src})
    task = PermutedVocabulary.model_construct(
        tokens=cfg, pad_to_multiple_of=pad, base_model=refs.get(base), vocabulary_axis=axis
    )
    result = task.execute(tokenizer_info=info, tensors={refs[m]: t for m, t in zip(models, tensors)})
    return [result[refs[m]] for m in models]


@pytest.mark.parametrize(
    ("base", "pad", "dtypes", "tokens"),
    [
        ("org/base", 64, (torch.float32,) * 3, None),
        (None, None, (torch.float32,) * 3, None),
        ("org/chat", 8, (torch.bfloat16, torch.float16, torch.bfloat16), None),
        (
            "org/base",
            64,
            (torch.float32,) * 3,
            {
                "<|im_start|>": {"source": {"kind": "model_token", "model": "org/chat", "token": "<s>"}},
                "<|im_end|>": {"source": {"kind": "model_token", "model": "org/other", "token_id": 7}},
                "w3": {"source": {"kind": "zero"}, "force": True},
                "w5": {"source": "org/other", "force": True},
                "w44": {"source": {"kind": "zero"}},
                "x1": {"source": "org/other"},
                "w0": {"source": {"kind": "zero"}},
            },
        ),
    ],
)
def test_align_rows_matches_mergekit(files, base, pad, dtypes, tokens):
    pytest.importorskip("mergekit")
    out = build_output_tokenizer("union", "org/base", files, list(tokens or ()), vocab_sizes=ROWS)
    alignment = align_vocabularies(out, ROWS, tokens, pad)
    models = list(ROWS)
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(ROWS[m], 6, generator=gen).to(d) for m, d in zip(models, dtypes)]
    before = [t.clone() for t in tensors]
    ours = align_rows(tensors, models, alignment, base=base)
    theirs = _mergekit_align(out, alignment, tensors, models, base, tokens, pad)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))
    assert ours[0].shape == (alignment.rows, 6) and out.size == 55 and alignment.rows == padded_rows(55, pad)


def test_align_rows_along_axis_1_matches_mergekit(files):
    pytest.importorskip("mergekit")
    out = build_output_tokenizer("union", "org/base", files, vocab_sizes=ROWS)
    alignment = align_vocabularies(out, ROWS, None, 64)
    models = list(ROWS)
    tensors = [torch.randn(3, ROWS[m], 2) for m in models]
    ours = align_rows(tensors, models, alignment, base="org/base", axis=1)
    theirs = _mergekit_align(out, alignment, tensors, models, "org/base", None, 64, axis=1)
    assert ours[0].shape == (3, 64, 2) and all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_align_rows_defaults_by_hand():
    # rows: a (both), b (only m0), c (only m1), d (neither); one padding row
    alignment = VocabAlignment(size=4, rows=5, maps={"m0": (0, 1, -1, -1, -1), "m1": (0, -1, 1, -1, -1)})
    m0, m1 = torch.tensor([[1.0], [2.0]]), torch.tensor([[10.0], [20.0]])
    a0, a1 = align_rows([m0, m1], ["m0", "m1"], alignment)
    assert a0.flatten().tolist() == [1, 2, 20, 0, 23 / 4]
    assert a1.flatten().tolist() == [10, 2, 20, 0, 32 / 4]
    b0, b1 = align_rows([m0, m1], ["m0", "m1"], alignment, missing="mean")
    assert b0.flatten().tolist() == [1, 2, 1.5, 1.5, 6 / 4] and b1.flatten().tolist() == [10, 15, 20, 15, 15]


def test_align_rows_base_and_mean_of_holders():
    maps = {"m0": (0, 1), "m1": (0, 1), "m2": (0, -1)}
    tensors = [torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [4.0]]), torch.tensor([[0.0]])]
    alignment = VocabAlignment(2, 2, maps)
    assert align_rows(tensors, list(maps), alignment)[2][1].item() == 3.0  # mean of the models having it
    assert align_rows(tensors, list(maps), alignment, base="m1")[2][1].item() == 4.0  # base's row


def test_align_rows_overrides_by_hand():
    maps = {"m0": (0, 1), "m1": (0, -1)}
    tensors = [torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0]])]
    auto_forced = VocabAlignment(2, 2, maps, (TokenOverride("a", 0, "auto", force=True),))
    # a row every model has, forced to the automatic default: base's row when base has it, else the mean
    assert [t[0].item() for t in align_rows(tensors, list(maps), auto_forced)] == [2.0, 2.0]
    assert [t[0].item() for t in align_rows(tensors, list(maps), auto_forced, base="m1")] == [3.0, 3.0]
    zero = VocabAlignment(2, 2, maps, (TokenOverride("b", 1, "zero"),))
    assert [t[1].item() for t in align_rows(tensors, list(maps), zero)] == [2.0, 0.0]  # only the lacking model
    assert [t[1].item() for t in align_rows(tensors, list(maps), zero, missing="mean")] == [2.0, 0.0]


def test_union_follows_model_order(files):
    reordered = {"org/other": files["org/other"], "org/chat": files["org/chat"], "org/base": files["org/base"]}
    out = build_output_tokenizer("union", "org/base", reordered, vocab_sizes=ROWS)
    assert [t for t, i in sorted(out.vocab.items(), key=lambda e: e[1])][50:] == ["x1", "x2", "<tool>", *CHATML]


def test_align_rows_errors():
    alignment = VocabAlignment(2, 2, {"m0": (0, 5), "m1": (0, 1)}, (TokenOverride("t", 1, "row", "m9", 0, True),))
    with pytest.raises(MergeMethodError, match="rows"):
        align_rows([torch.zeros(2, 3), torch.zeros(2, 3)], ["m0", "m1"], alignment)
    alignment = VocabAlignment(2, 2, {"m0": (0, 1), "m1": (0, 1)}, alignment.overrides)
    with pytest.raises(MergeMethodError, match="not an input"):
        align_rows([torch.zeros(2, 3), torch.zeros(2, 3)], ["m0", "m1"], alignment)
    with pytest.raises(MergeMethodError, match="differ"):
        align_rows([torch.zeros(2, 3), torch.zeros(2, 4)], ["m0", "m1"], alignment)


# --- chat templates ---------------------------------------------------------------------------------------------


def test_model_chat_template_prefers_the_jinja_file():
    config = json.dumps({"chat_template": TEMPLATE_A}).encode()
    assert model_chat_template({"tokenizer_config.json": config}) == TEMPLATE_A
    assert (
        model_chat_template({"tokenizer_config.json": config, "chat_template.jinja": TEMPLATE_B.encode()}) == TEMPLATE_B
    )
    named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": TEMPLATE_B}]
    listed = json.dumps({"chat_template": named})
    assert model_chat_template({"tokenizer_config.json": listed.encode()}) == TEMPLATE_B
    assert model_chat_template(make_tokenizer(WORDS, template=TEMPLATE_A)) == TEMPLATE_A
    assert model_chat_template({}) is None


def test_resolve_chat_template_variants():
    a, b, none = ({"chat_template.jinja": t.encode()} for t in (TEMPLATE_A, TEMPLATE_B, ""))
    assert resolve_chat_template("auto", {"x": b, "y": a, "z": a}) == TEMPLATE_A  # the most common
    assert resolve_chat_template("auto", {"x": b, "y": a, "n": none}) == TEMPLATE_B  # a tie: the first model's
    assert resolve_chat_template("auto", {"n": none}) is None
    assert resolve_chat_template(None, {"x": a}) is None
    assert resolve_chat_template(TEMPLATE_B, {}) == TEMPLATE_B
    assert all("{" in resolve_chat_template(name, {}) for name in BUILTIN_CHAT_TEMPLATES)
    with pytest.raises(RecipeError, match="built-in name"):
        resolve_chat_template("vicuna", {})


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there "}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": " Hello! "},
        {"role": "user", "content": "Bye"},
    ],
]


def _render(template: str, conversation: list[dict], generation: bool) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered = render_jinja_template(
        conversations=[conversation],
        chat_template=template,
        add_generation_prompt=generation,
        bos_token="<s>",
        eos_token="</s>",
    )
    return rendered[0][0]


@pytest.mark.parametrize("name", ["chatml", "mistral"])
def test_builtin_templates_render_like_mergekits(name):
    pytest.importorskip("mergekit")
    from importlib.resources import files as resource_files

    import mergekit._data.chat_templates as mk_templates

    theirs = resource_files(mk_templates).joinpath(f"{name}.jinja").read_text()
    for conversation in CONVERSATIONS:
        for generation in (False, True):
            ours = resolve_chat_template(name, {})
            assert _render(ours, conversation, generation) == _render(theirs, conversation, generation)


def test_builtin_templates_render_their_formats():
    conversation = CONVERSATIONS[1]
    assert _render(resolve_chat_template("llama3", {}), conversation, True) == (
        "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert _render(resolve_chat_template("alpaca", {}), conversation, True) == (
        "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n### Instruction:\nBye\n\n### Response:\n"
    )
    exaone = _render(resolve_chat_template("exaone", {}), CONVERSATIONS[0], True)
    assert exaone == "[|system|][|endofturn|]\n[|user|]Hi there \n[|assistant|]"


# --- build_output_tokenizer against mergekit's build_tokenizer -----------------------------------------------------


def _model_dirs(root: Path, models: dict[str, dict[str, bytes]], rows: dict[str, int]) -> dict[str, str]:
    from transformers import LlamaConfig

    paths = {}
    for i, (label, model_files) in enumerate(models.items()):
        directory = root / f"m{i}"
        directory.mkdir()
        for name, data in model_files.items():
            (directory / name).write_bytes(data)
        config = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
        LlamaConfig(vocab_size=rows[label], architectures=["LlamaForCausalLM"], **config).save_pretrained(directory)
        paths[label] = str(directory)
    return paths


@pytest.mark.parametrize(("source", "added"), [("union", ["<extra>", "w3"]), ("base", ["<extra>"]), ("org/chat", [])])
def test_build_matches_mergekit(files, tmp_path, source, added):
    pytest.importorskip("mergekit")
    from mergekit.common import ModelReference
    from mergekit.tokenizer.build import build_tokenizer

    paths = _model_dirs(tmp_path, files, ROWS)
    by_path = {paths[label]: files[label] for label in files}
    refs = [ModelReference.parse(p) for p in paths.values()]
    mk_source = ModelReference.parse(paths[source]) if source in paths else source
    info = build_tokenizer(refs[0], refs, mk_source, False, add_tokens=added)
    sizes = {paths[k]: v for k, v in ROWS.items()}
    out = build_output_tokenizer(paths.get(source, source), paths["org/base"], by_path, added, vocab_sizes=sizes)
    theirs = info.tokenizer.get_vocab()
    assert set(out.vocab) == set(theirs)
    hashed = ("x1", "x2")  # mergekit orders new regular tokens by hash
    assert {t: i for t, i in out.vocab.items() if t not in hashed} == {
        t: i for t, i in theirs.items() if t not in hashed
    }
    for label, ref in zip(files, refs):  # compare per token
        ours = align_vocabularies(out, {paths[label]: ROWS[label]}).maps[paths[label]]
        # mergekit leaves out a token beyond the model's rows (and then fails on it); we map it to -1
        expected = {t: info.permutations[ref].get(i, -1) for t, i in theirs.items()}
        assert {t: ours[out.vocab[t]] for t in theirs} == expected


def test_stripping_matches_mergekit(tmp_path):
    pytest.importorskip("mergekit")
    from mergekit.common import ModelReference
    from mergekit.tokenizer.build import get_stripped_tokenizer

    bpe = make_tokenizer(WORDS + ["w", "1", "2"], ("<|im_start|>",), bpe=True)
    path = _model_dirs(tmp_path, {"a": bpe}, {"a": 51})["a"]
    theirs = get_stripped_tokenizer(ModelReference.parse(path).model)
    out = build_output_tokenizer("base", "a", {"a": bpe}, vocab_sizes={"a": 51})
    assert out.vocab == theirs.get_vocab() and len(out.vocab) == 51
