"""Vocabularies of a merge: the output tokenizer, row maps, re-indexed embeddings, `tokens:` and chat templates.

Semantics follow mergekit 0.1.5 (`tokenizer/build.py`, `tokenizer/embed.py`, `merge.py`); where they differ, the
docstring says so. Models are named by their label, `str(ModelRef)`. Tokenizer files are bytes; transformers only
ever sees them in a temporary directory, offline.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, Literal

import torch

from mergehub.errors import MergeMethodError, RecipeError, SourceError, excerpt
from mergehub.recipe import ModelRef

__all__ = [
    "TOKENIZER_FILES",
    "tokenizer_files",
    "BUILTIN_CHAT_TEMPLATES",
    "OutputTokenizer",
    "TokenOverride",
    "VocabAlignment",
    "align_rows",
    "align_vocabularies",
    "build_output_tokenizer",
    "config_updates",
    "model_chat_template",
    "padded_rows",
    "resolve_chat_template",
    "row_map",
    "token_overrides",
    "vocab_of",
]

Files = Mapping[str, bytes]
BUILTIN_CHAT_TEMPLATES = ("alpaca", "chatml", "exaone", "llama3", "mistral")
_TEMPLATE_DIR = Path(__file__).parent / "chat_templates"
_SPECIAL = ("bos", "eos", "pad", "unk")


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)
"""The files a Hugging Face tokenizer may consist of."""


def tokenizer_files(source: Any) -> Files:
    """The tokenizer files a model source has (a `TensorSource`: anything with `read_file`)."""
    return {name: data for name in TOKENIZER_FILES if (data := source.read_file(name)) is not None}


@dataclass(frozen=True)
class OutputTokenizer:
    """The merged model's tokenizer: its files, its vocabulary, and the vocabulary of every input model."""

    files: dict[str, bytes]
    vocab: dict[str, int]
    size: int
    """Rows the vocabulary needs before padding: `max(len(vocab), highest id + 1)`."""
    special_ids: dict[str, int]
    """`bos_token_id`, `eos_token_id`, `pad_token_id`, `unk_token_id`: those the tokenizer defines."""
    inputs: dict[str, dict[str, int]]
    """Each model's token -> id (a model without tokenizer files takes the base's, as in mergekit)."""


@dataclass(frozen=True)
class TokenOverride:
    """One `tokenizer.tokens` entry, resolved: where output row `row` gets its default embedding.

    `source` is "zero", "row" (row `source_row` of model `model`'s own tensor) or "auto" (no `source`: the
    default a missing token gets). The default replaces the row of models lacking the token; with `force`, of all.
    """

    token: str
    row: int
    source: Literal["zero", "row", "auto"]
    model: str | None = None
    source_row: int = -1
    force: bool = False


@dataclass(frozen=True)
class VocabAlignment:
    """How every model's vocabulary-indexed tensors map onto the output rows."""

    size: int
    rows: int
    maps: dict[str, tuple[int, ...]]
    """Model label -> for each output row, the model's row holding that token, or -1."""
    overrides: tuple[TokenOverride, ...] = ()


def _load(files: Files, label: str) -> Any:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / Path(name).name).write_bytes(data)
        try:
            return AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
        except Exception as e:
            raise SourceError(
                f"The tokenizer of {label} cannot be loaded: {e}",
                hint="Its tokenizer files must load with transformers' AutoTokenizer without remote code.",
            ) from e


def _save(tokenizer: Any) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    if "tokenizer_config.json" in files:  # transformers 5 leaks its load options into the saved config
        config = json.loads(files["tokenizer_config.json"])
        config = {k: v for k, v in config.items() if k not in ("is_local", "local_files_only")}
        text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        files["tokenizer_config.json"] = text.encode()
    return files


def _strip(tokenizer: Any, rows: int, label: str) -> Any | None:
    """The tokenizer without tokens whose id is >= `rows` (mergekit's `get_stripped_tokenizer`), or None if none are."""
    unused = {tok for tok, i in tokenizer.get_vocab().items() if i >= rows}
    if not unused:
        return None
    files = _save(tokenizer)
    data = json.loads(files.get("tokenizer.json", b"{}"))
    model = data.get("model", {})
    if isinstance(model.get("vocab"), dict):
        model["vocab"] = {tok: i for tok, i in model["vocab"].items() if i < rows}
    elif isinstance(model.get("vocab"), list):
        model["vocab"] = model["vocab"][:rows]
    else:
        raise SourceError(f"The tokenizer of {label} has tokens beyond its {rows} embedding rows and cannot be cut.")
    pairs = (m.split(" ") if isinstance(m, str) else m for m in model.get("merges", []))
    model["merges"] = [m for m, p in zip(model.get("merges", []), pairs) if not unused.intersection(p)]
    data["added_tokens"] = [e for e in data.get("added_tokens", []) if e["id"] < rows]
    files["tokenizer.json"] = json.dumps(data, ensure_ascii=False).encode()
    config = json.loads(files.get("tokenizer_config.json", b"{}"))
    if "added_tokens_decoder" in config:
        config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items() if int(k) < rows}
        files["tokenizer_config.json"] = json.dumps(config, ensure_ascii=False).encode()
    return _load(files, label)


def vocab_of(files: Files, label: str = "model") -> dict[str, int]:
    """A model's vocabulary from its tokenizer files: token -> id, added tokens included."""
    return dict(_load(files, label).get_vocab())


def _label(text: str, known: Mapping[str, Any], what: str, location: str | None = None) -> str:
    label = str(ModelRef.parse(text))
    if label not in known:
        hint = "Name one of: " + ", ".join(known) + "."
        raise RecipeError(
            f"{what} names {excerpt(text)}, which is not one of the recipe's models.", hint=hint, location=location
        )
    return label


def build_output_tokenizer(
    source: str,
    base: str | None,
    tokenizer_files: Mapping[str, Files],
    added_tokens: Sequence[str] = (),
    *,
    vocab_sizes: Mapping[str, int] | None = None,
) -> OutputTokenizer:
    """Build the merged model's tokenizer as mergekit's `build_tokenizer` does.

    Args:
        source: "base" (the base's tokenizer, cut to its embedding rows), "union" (the base's, then every token
            another model has within its rows: regular tokens by model then id, then added tokens, first settings
            winning) or a model reference (that model's tokenizer, uncut).
        base: the base model's label; None takes the first model of `tokenizer_files`.
        tokenizer_files: every referenced model's label -> its tokenizer files (empty when it has none), base first.
        added_tokens: the keys of `tokenizer.tokens`, added as ordinary tokens when absent.
        vocab_sizes: each model's embedding rows (config `vocab_size`); tokens at or beyond them are ignored.

    Raises:
        RecipeError: `source` names no model of the recipe.
        SourceError: the base or source model has no tokenizer, or a tokenizer cannot be loaded.
    """
    sizes, base = dict(vocab_sizes or {}), base or next(iter(tokenizer_files))
    hint = "Set `tokenizer_source` to a model that has a tokenizer."
    if not tokenizer_files.get(base):
        raise SourceError(f"The base model {base} has no tokenizer files.", hint=hint)
    loaded = {label: _load(files, label) for label, files in tokenizer_files.items() if files}
    stripped = _strip(loaded[base], sizes[base], base) if base in sizes else None
    loaded[base] = loaded[base] if stripped is None else stripped
    inputs = {label: dict(loaded.get(label, loaded[base]).get_vocab()) for label in tokenizer_files}
    changed, origin = stripped is not None, base
    if source == "union":
        out = _union(base, loaded, sizes)
        origin = base if out.get_vocab() == loaded[base].get_vocab() else None
    elif source == "base":
        out = loaded[base]
    else:
        origin = _label(source, tokenizer_files, "tokenizer_source")
        if origin not in loaded:
            raise SourceError(f"{origin} has no tokenizer files.", hint=hint)
        out, changed = _load(tokenizer_files[origin], origin), False
    missing = [tok for tok in dict.fromkeys(added_tokens) if tok not in out.get_vocab()]
    if missing:
        out.add_tokens(missing)
    vocab = dict(out.get_vocab())
    if origin and not changed and not missing:  # the model's own tokenizer, untouched: its files as they are
        files = {name: data for name, data in tokenizer_files[origin].items() if name != "config.json"}
    else:
        files = _save(out)
    special = {f"{s}_token_id": getattr(out, f"{s}_token_id") for s in _SPECIAL}
    return OutputTokenizer(
        files=files,
        vocab=vocab,
        size=max(len(vocab), max(vocab.values(), default=-1) + 1),
        special_ids={k: v for k, v in special.items() if isinstance(v, int)},
        inputs=inputs,
    )


def _union(base: str, loaded: Mapping[str, Any], sizes: Mapping[str, int]) -> Any:
    regular: dict[str, None] = {}
    added: dict[str, Any] = {}
    for label in [base, *(label for label in loaded if label != base)]:
        tokenizer, limit = loaded[label], sizes.get(label, float("inf"))
        regular.update((tok, None) for tok, i in sorted(tokenizer.get_vocab().items(), key=lambda e: e[1]) if i < limit)
        for i, info in sorted(tokenizer.added_tokens_decoder.items()):
            if i < limit:
                added.setdefault(info.content, info)
    out = _load(_save(loaded[base]), base)
    base_vocab = loaded[base].get_vocab()
    out.add_tokens([tok for tok in regular if tok not in added and tok not in base_vocab])
    out.add_tokens(list(added.values()))
    return out


def padded_rows(size: int, pad_to_multiple_of: int | None) -> int:
    """The output's embedding rows: `size` rounded up to `tokenizer.pad_to_multiple_of`."""
    return -(-size // pad_to_multiple_of) * pad_to_multiple_of if pad_to_multiple_of else size


def row_map(
    output_vocab: Mapping[str, int], output_rows: int, model_vocab: Mapping[str, int], model_rows: int
) -> tuple[int, ...]:
    """For each output row, the model's row holding the same token; -1 where it lacks it or the row is padding."""
    rows = [-1] * output_rows
    for tok, i in output_vocab.items():
        j = model_vocab.get(tok, -1)
        if i < output_rows and 0 <= j < model_rows:
            rows[i] = j
    return tuple(rows)


def token_overrides(
    tokens: Mapping[str, Any] | None, output: OutputTokenizer, model_rows: Mapping[str, int]
) -> tuple[TokenOverride, ...]:
    """Resolve `tokenizer.tokens` (`{token: {source, force}}`, mergekit's schema) against the vocabularies.

    `source` is a model reference (that model's row for the same token), `{kind: model_token, model, token | token_id}`
    (any row of that model) or `{kind: zero}`; without `source` the token takes the automatic default.

    Raises:
        RecipeError: an entry is malformed, names an unknown model, or a token or row the model lacks.
    """
    result, hint = [], "Write `{source: <model> | {kind: zero} | {kind: model_token, model, token}, force: bool}`."
    for token, entry in (tokens or {}).items():
        where, entry, location = f"tokenizer.tokens[{excerpt(token)}]", dict(entry or {}), f"tokenizer.tokens.{token}"
        if set(entry) - {"source", "force"} or not isinstance(entry.get("force", False), bool):
            raise RecipeError(f"{where} is malformed: {excerpt(entry)}.", hint=hint, location=location)
        if token not in output.vocab:
            raise RecipeError(
                f"{where}: the output vocabulary lacks it.", hint="Pass the keys as `added_tokens`.", location=location
            )
        src, force, row = entry.get("source"), entry.get("force", False), output.vocab[token]
        if src is None:
            result.append(TokenOverride(token, row, "auto", force=force))
            continue
        if isinstance(src, Mapping) and src.get("kind") == "zero" and set(src) == {"kind"}:
            result.append(TokenOverride(token, row, "zero", force=force))
            continue
        if isinstance(src, str):
            model, wanted = _label(src, output.inputs, where, location), token
        elif (
            isinstance(src, Mapping)
            and len(src) == 3
            and set(src) - {"token", "token_id"} == {"kind", "model"}
            and (src["kind"] == "model_token")
        ):
            model = _label(str(src.get("model")), output.inputs, where, location)
            wanted = int(src["token_id"]) if "token_id" in src else str(src["token"])
        else:
            raise RecipeError(f"{where}: source {excerpt(src)} is not understood.", hint=hint, location=location)
        source_row = wanted if isinstance(wanted, int) else output.inputs[model].get(wanted, -1)
        if not 0 <= source_row < model_rows.get(model, source_row + 1):
            raise RecipeError(
                f"{where}: {model} has no token {excerpt(wanted)} in its rows.",
                hint="Choose a token it has.",
                location=location,
            )
        result.append(TokenOverride(token, row, "row", model, source_row, force))
    return tuple(sorted(result, key=lambda o: o.row))


def align_vocabularies(
    output: OutputTokenizer,
    model_rows: Mapping[str, int],
    tokens: Mapping[str, Any] | None = None,
    pad_to_multiple_of: int | None = None,
) -> VocabAlignment:
    """Everything the executor needs to re-index vocabulary tensors: output rows, row maps and overrides."""
    rows = padded_rows(output.size, pad_to_multiple_of)
    maps = {label: row_map(output.vocab, rows, output.inputs[label], n) for label, n in model_rows.items()}
    return VocabAlignment(output.size, rows, maps, token_overrides(tokens, output, model_rows))


def align_rows(
    tensors: Sequence[torch.Tensor],
    models: Sequence[str],
    alignment: VocabAlignment,
    *,
    base: str | None = None,
    axis: int = 0,
    missing: Literal["mergekit", "mean"] = "mergekit",
) -> list[torch.Tensor]:
    """Re-index one vocabulary tensor per model onto the output rows, before merging (mergekit's `PermutedVocabulary`).

    A model keeps its own row for every token it has, unless a `force`d override replaces it. A row it lacks takes the
    token's default, the same for every model: the override's source; else the only model having the token; else
    `base`'s row when base has it; else the mean of the rows of the models having it; zeros if none has it.
    `missing="mean"` gives the lacking model its own mean row instead (not mergekit). Padding rows take each model's
    mean re-indexed row. Tensors are promoted to one dtype; inputs are not modified.
    """
    views, models = [t.movedim(axis, 0) for t in tensors], list(models)
    if any(v.shape[1:] != views[0].shape[1:] for v in views):
        raise MergeMethodError(f"Vocabulary tensors differ beyond axis {axis}: {[tuple(t.shape) for t in tensors]}.")
    dtype = reduce(torch.promote_types, (v.dtype for v in views))
    n, device, shape = alignment.size, views[0].device, views[0].shape[1:]
    maps = torch.tensor([alignment.maps[m][:n] for m in models], dtype=torch.long, device=device).view(len(models), n)
    for model, view, row in zip(models, views, maps):
        if n and int(row.max()) >= view.shape[0]:
            raise MergeMethodError(f"{model}'s vocabulary tensor has {view.shape[0]} rows; its row map needs more.")
    present, own = maps >= 0, [torch.empty((alignment.rows, *shape), dtype=dtype, device=device) for _ in models]
    for tensor, view, row in zip(own, views, maps):
        torch.index_select(view.to(dtype), 0, row.clamp(min=0), out=tensor[:n])
    overrides = [o for o in alignment.overrides if o.row < n]
    forced, explicit = torch.zeros(n, dtype=torch.bool, device=device), torch.zeros(n, dtype=torch.bool, device=device)
    forced[[o.row for o in overrides if o.force]] = True
    explicit[[o.row for o in overrides if o.force or o.source != "auto"]] = True
    need = (~present.all(0) | forced).nonzero().flatten()  # rows that need a default
    count, col = present[:, need].sum(0), lambda t: t.view(-1, *[1] * len(shape))
    default = torch.zeros((len(need), *shape), dtype=dtype, device=device)
    for k in range(len(models)):  # sum in model order, as mergekit does
        default = default + torch.where(col(present[k, need]), own[k][need], 0)
    default = default / col(count.clamp(min=1)).to(dtype)
    if base in models:
        use = (count >= 2) & present[models.index(base), need]
        default[use] = own[models.index(base)][need][use]
    position = dict(zip(need.tolist(), range(len(need))))
    for o in overrides:
        if o.row in position and o.source != "auto":
            if o.source == "row" and o.model not in models:
                raise MergeMethodError(f"Token {o.token!r} takes its row from {o.model}, not an input of this tensor.")
            default[position[o.row]] = 0 if o.source == "zero" else views[models.index(o.model)][o.source_row]
    result = []
    for k, tensor in enumerate(own):
        take = ~present[k, need] | forced[need]
        fill = default[take]
        if missing == "mean":
            fill = torch.where(col(explicit[need][take]), fill, views[k].to(dtype).mean(0))
        tensor[need[take]] = fill
        if alignment.rows > n:  # padding: the model's mean row, as mergekit does
            tensor[n:] = tensor[:n].mean(0)
        result.append(tensor.movedim(0, axis))
    return result


def model_chat_template(files: Files) -> str | None:
    """A model's chat template as transformers reads it: `chat_template.jinja`, else `tokenizer_config.json`'s."""
    if "chat_template.jinja" in files:
        return files["chat_template.jinja"].decode()
    template = json.loads(files.get("tokenizer_config.json", b"{}")).get("chat_template")
    if isinstance(template, list):
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    return template if isinstance(template, str) else None


def resolve_chat_template(spec: str | None, model_files: Mapping[str, Files]) -> str | None:
    """The recipe's `chat_template` as text; None keeps the output tokenizer's own.

    `auto` takes the template most models share (ties: the earliest model in `model_files`, base first), as mergekit
    does; a built-in name (`BUILTIN_CHAT_TEMPLATES`) our own version of that format; anything else is a Jinja template.
    """
    if not spec:
        return None
    if spec == "auto":
        found = [t.strip() for files in model_files.values() if (t := model_chat_template(files))]
        return Counter(found).most_common(1)[0][0] if found else None
    if spec in BUILTIN_CHAT_TEMPLATES:
        return (_TEMPLATE_DIR / f"{spec}.jinja").read_text()
    if len(spec) < 20 or "{" not in spec:
        raise RecipeError(
            f"chat_template {excerpt(spec)} is neither a Jinja template nor a built-in name.",
            hint="Use `auto`, one of " + ", ".join(BUILTIN_CHAT_TEMPLATES) + ", or the Jinja template itself.",
        )
    return spec


def config_updates(output: OutputTokenizer, rows: int, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Config values consistent with the written tokenizer: `vocab_size` and the special ids that changed.

    Special ids are updated only where `config` already has the key (mergekit touches `vocab_size` only); a list
    value (several EOS ids) is kept when it contains the tokenizer's id.
    """
    updates: dict[str, Any] = {"vocab_size": rows}
    for key, token_id in output.special_ids.items():
        current = (config or {}).get(key, token_id)
        if current != token_id and not (isinstance(current, list) and token_id in current):
            updates[key] = token_id
    return updates
