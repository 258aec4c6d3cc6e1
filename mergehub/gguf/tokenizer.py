"""A model's tokenizer as GGUF metadata: tokens, their types and scores, merges, special ids, chat template.

Follows `convert_hf_to_gguf.py`: byte-level BPE vocabularies become `gpt2` with the merges and the
pre-tokenizer llama.cpp recognises by hashing the encoding of a check text (the table in
`pre_tokenizers.json` is generated from the converter; a vocabulary it has not seen is recognised by its split
regex); SentencePiece vocabularies (`tokenizer.model`,
or a Llama-style `tokenizer.json` with byte fallback) become `llama` with scores. Special token ids, the
`add_bos`/`add_eos` flags, merges and the chat template are read by gguf-py's `SpecialVocab`. The tokenizer
files only ever sit in a temporary directory, read offline.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf

from mergehub.errors import GGUFError
from mergehub.gguf.arch import Family

__all__ = ["GGUFVocab", "build_vocab", "pre_tokenizer"]

_TABLE = Path(__file__).with_name("pre_tokenizers.json")
_SPM_SPACE = "\u2581"
Types = gguf.TokenType


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer keys of a GGUF file; `size` is the token count llama.cpp's converter takes as the real
    vocabulary."""

    model: str
    pre: str
    tokens: tuple[str | bytes, ...]
    types: tuple[int, ...]
    scores: tuple[float, ...] | None
    special: Any  # gguf.SpecialVocab
    add_space_prefix: bool | None
    size: int
    warnings: tuple[str, ...] = ()

    def apply(self, writer: gguf.GGUFWriter) -> None:
        """Set the tokenizer keys on `writer`."""
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(list(self.tokens))
        if self.scores is not None:
            writer.add_token_scores(list(self.scores))
        writer.add_token_types(list(self.types))
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(writer, quiet=True)


@cache
def _pre_tokenizers() -> tuple[str, dict[str, str]]:
    data = json.loads(_TABLE.read_text(encoding="utf-8"))
    return data["check_text"], data["pre_tokenizers"]


def pre_tokenizer(tokenizer: Any, tokenizer_json: Mapping[str, Any] | None = None) -> str | None:
    """llama.cpp's name for a BPE tokenizer's pre-tokenizer; None if unknown.

    First as llama.cpp chooses it: the hash of the tokenizer's encoding of a check text. A vocabulary llama.cpp has
    not seen (a fine-tune's own) is then recognised by its split regex, from the table transformers' GGUF loader
    reads it back with: the first of its names llama.cpp also uses; a plain GPT-2 byte-level split is `gpt-2`.
    """
    text, table = _pre_tokenizers()
    found = table.get(sha256(str(tokenizer.encode(text)).encode()).hexdigest())
    if found is not None or tokenizer_json is None:
        return found
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if [step.get("type") for step in steps] == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    splits = [step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"]
    if len(splits) != 1 or not any(step.get("type") == "ByteLevel" for step in steps):
        return None
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:
        return None
    known = set(table.values())
    return next(
        (name for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items() if regex == splits[0] and name in known), None
    )


def _looks_special(token: str) -> bool:
    """Added tokens the converter marks as control tokens even when the tokenizer does not call them special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise GGUFError(
            f"The tokenizer cannot be loaded for GGUF: {e}", hint="It must load with AutoTokenizer without remote code."
        ) from e


def _gpt2(directory: Path, hparams: Mapping[str, Any]) -> tuple[list[str], list[int], str, list[str]]:
    """Tokens, types and pre-tokenizer of a BPE vocabulary (`get_vocab_base` in the converter)."""
    tokenizer = _load_tokenizer(directory)
    vocab: dict[str, int] = tokenizer.vocab
    size = hparams.get("vocab_size", len(vocab))
    if max(vocab.values()) >= size:
        raise GGUFError(f"The tokenizer has ids up to {max(vocab.values())}, beyond the model's vocab_size {size}.")
    warnings = []
    path = directory / "tokenizer.json"
    pre = pre_tokenizer(tokenizer, json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None)
    if pre is None:
        pre = "default"
        warnings.append(
            "llama.cpp does not know this tokenizer's pre-tokenizer; the GGUF names `default`, so llama.cpp may split "
            "text differently from transformers."
        )
    reverse = {i: t for t, i in vocab.items()}
    added, decoder = tokenizer.get_added_vocab(), tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(Types.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if decoder[i].special or _looks_special(token):
                types.append(Types.CONTROL)
            else:
                token = token.replace(_SPM_SPACE, " ")
                types.append(Types.USER_DEFINED)
        else:
            types.append(Types.NORMAL)
        tokens.append(token)
    return tokens, types, pre, warnings


def _sentencepiece(
    directory: Path, hparams: Mapping[str, Any], *, phi3: bool
) -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and types of a `tokenizer.model` vocabulary, with added tokens laid over it.

    `phi3` follows the Phi-3 converter's variant: added tokens from `tokenizer.json` too, no look-alike control tokens.
    """
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    processor.LoadFromFile(str(directory / "tokenizer.model"))
    size = hparams.get("vocab_size") or processor.vocab_size()
    tokens = [f"[PAD{i}]".encode() for i in range(size)]
    scores = [-10000.0] * size
    types = [int(Types.UNUSED)] * size
    for i in range(min(processor.vocab_size(), size)):
        kind = Types.NORMAL
        if processor.IsUnknown(i):
            kind = Types.UNKNOWN
        elif processor.IsControl(i):
            kind = Types.CONTROL
        elif processor.IsUnused(i):
            kind = Types.UNUSED
        elif processor.IsByte(i):
            kind = Types.BYTE
        tokens[i], scores[i], types[i] = processor.IdToPiece(i).encode(), processor.GetScore(i), kind

    def lay(token_id: int, text: str, special: bool) -> None:
        if token_id >= size:
            return
        if special or (not phi3 and _looks_special(text)):
            types[token_id] = Types.CONTROL
        else:
            text = text if phi3 else text.replace(_SPM_SPACE, " ")
            types[token_id] = Types.USER_DEFINED
        tokens[token_id], scores[token_id] = text.encode(), -1000.0

    added = directory / "added_tokens.json"
    if added.is_file():
        for text, token_id in json.loads(added.read_text(encoding="utf-8")).items():
            if token_id < size:
                tokens[token_id], scores[token_id], types[token_id] = text.encode(), -1000.0, Types.USER_DEFINED
    config = directory / "tokenizer_config.json"
    if config.is_file():
        for token_id, entry in json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder", {}).items():
            lay(int(token_id), entry["content"], bool(entry.get("special")))
    if phi3 and (directory / "tokenizer.json").is_file():
        for entry in json.loads((directory / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", []):
            lay(int(entry["id"]), entry["content"], bool(entry.get("special")))
    return tokens, scores, types


def _llama_hf(directory: Path) -> tuple[list[bytes], list[float], list[int]]:
    """A Llama-style SentencePiece vocabulary stored in `tokenizer.json` only (gguf-py's `LlamaHfVocab`)."""
    vocab = gguf.LlamaHfVocab(directory)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    return tokens, scores, types


def _json_size(directory: Path) -> int:
    data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    return len(data["model"]["vocab"]) + len(data["added_tokens"])


def _choose(family: Family, directory: Path) -> str:
    """Which vocabulary reader the converter uses for this family and these files."""
    has_model = (directory / "tokenizer.model").is_file()
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if family.name == "phi3":
        return "gpt2" if config.get("tokenizer_class") == "GPT2Tokenizer" else "phi3"
    if has_model:
        return "spm"
    if family.name == "gemma2":
        raise GGUFError(
            "A Gemma 2 GGUF needs the SentencePiece tokenizer.model.", hint="Keep tokenizer.model with the model."
        )
    if family.name == "llama":
        try:
            gguf.LlamaHfVocab(directory)
            return "llama_hf"
        except (FileNotFoundError, TypeError, KeyError):
            return "gpt2"
    return "gpt2"


def build_vocab(family: Family, files: Mapping[str, bytes], hparams: Mapping[str, Any]) -> GGUFVocab:
    """The GGUF vocabulary of a model from its tokenizer files (and config.json, for special ids it lacks).

    Raises:
        GGUFError: no tokenizer, or one that cannot be read.
    """
    if not any(name in files for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise GGUFError(
            "The model has no tokenizer files.",
            hint="A GGUF file carries its tokenizer: keep tokenizer.json with the model.",
        )
    with tempfile.TemporaryDirectory(prefix="mergehub-gguf-vocab-") as tmp:
        directory = Path(tmp)
        for name, data in files.items():
            (directory / Path(name).name).write_bytes(data)
        kind = _choose(family, directory)
        warnings: list[str] = []
        scores: list[float] | None = None
        if kind == "gpt2":
            tokens, types, pre, warnings = _gpt2(directory, hparams)
            model, size = "gpt2", (_json_size(directory) if (directory / "tokenizer.json").is_file() else len(tokens))
        else:
            if kind == "llama_hf":
                tokens, scores, types = _llama_hf(directory)
            else:
                tokens, scores, types = _sentencepiece(directory, hparams, phi3=kind == "phi3")
            model, pre, size = "llama", "default", len(tokens)
        special = gguf.SpecialVocab(
            directory, load_merges=model == "gpt2", n_vocab=None if model == "gpt2" else len(tokens)
        )
    config = json.loads(files.get("tokenizer_config.json", b"{}"))
    add_space_prefix = None
    if family.name in ("gemma2", "gemma3") and kind == "spm":
        add_space_prefix = False
    elif family.name == "llama" and config.get("add_prefix_space") is not None:
        add_space_prefix = bool(config["add_prefix_space"])
    if family.name == "llama" and hparams.get("vocab_size") == 49152:
        special.add_special_token["bos"] = False  # the converter's rule for 49152-token Llamas (Granite, SmolLM)
    return GGUFVocab(
        model,
        pre,
        tuple(tokens),
        tuple(int(t) for t in types),
        tuple(scores) if scores is not None else None,
        special,
        add_space_prefix,
        size,
        tuple(warnings),
    )
