"""The compatibility table: each model's architecture, sizes, dtype and license, from configs and headers only."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergehub import api
from mergehub.errors import MergehubError
from mergehub.interfaces.space.safety import (
    check_model_reference,
    check_recipe_text,
    refuse_local_shadows,
    user_message,
)
from mergehub.publish.card_data import card_license, read_card_data
from mergehub.units import format_count, format_size

_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
_VOCAB_KEYS = ("vocab_size", "padded_vocab_size")


@dataclass(frozen=True)
class ModelSummary:
    """A model as the compatibility table shows it, from its config, safetensors headers and card."""

    ref: str
    architecture: str
    layers: int | None
    hidden: int | None
    vocab: int | None
    dtype: str
    parameters: int
    nbytes: int
    license: str


def _config_value(config: Mapping[str, Any], keys: Sequence[str]) -> int | None:
    """The first integer under `keys` in the config (or its `text_config`)."""
    for source in (config, config.get("text_config") or {}):
        for key in keys:
            if isinstance(source.get(key), int):
                return source[key]
    return None


def _card_license(readme: bytes | None) -> str:
    """The license in a model card's metadata (`other (name)` with its name), or `?`."""
    data = read_card_data(readme)
    return (card_license(data) if data else None) or "?"


def summarize_model(
    ref: str, config: Mapping[str, Any], tensors: Mapping[str, Any], readme: bytes | None
) -> ModelSummary:
    """Summarize a model from its config, its tensors (anything with `dtype`, `shape`, `nbytes`) and its README."""
    by_dtype: Counter[str] = Counter()
    parameters = nbytes = 0
    for info in tensors.values():
        parameters += math.prod(info.shape)
        nbytes += info.nbytes
        by_dtype[info.dtype] += info.nbytes
    architectures = config.get("architectures") or []
    return ModelSummary(
        ref=ref,
        architecture=str(architectures[0] if architectures else config.get("model_type", "?")),
        layers=_config_value(config, _LAYER_KEYS),
        hidden=_config_value(config, _HIDDEN_KEYS),
        vocab=_config_value(config, _VOCAB_KEYS),
        dtype=by_dtype.most_common(1)[0][0] if by_dtype else "?",
        parameters=parameters,
        nbytes=nbytes,
        license=_card_license(readme),
    )


def compatibility_markdown(summaries: Sequence[ModelSummary], errors: Mapping[str, str] | None = None) -> str:
    """A Markdown table of the models, marking every figure that differs from the first model's."""
    errors = dict(errors or {})
    if not summaries and not errors:
        return "No models yet: pick models, then check them."
    columns = ("architecture", "layers", "hidden", "vocab", "dtype")
    lines = [
        "| model | architecture | layers | hidden | vocab | dtype | parameters | size | license |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    first = summaries[0] if summaries else None
    differ: set[str] = set()
    for s in summaries:
        cells = []
        for column in columns:
            value = getattr(s, column)
            mark = first is not None and value != getattr(first, column)
            differ |= {column} if mark else set()
            cells.append(f"{'⚠️ ' if mark else ''}{value if value is not None else '?'}")
        figures = f"{format_count(s.parameters)} | {format_size(s.nbytes)} | {s.license}"
        lines.append(f"| `{s.ref}` | " + " | ".join(cells) + f" | {figures} |")
    for ref, message in errors.items():
        lines.append(f"| `{ref}` | ❌ {message.splitlines()[0]} |  |  |  |  |  |  |  |")
    if errors:
        verdict = "❌ Some models cannot be read; see the table."
    elif len(summaries) < 2:
        verdict = "One model: nothing to compare."
    elif differ & {"architecture", "hidden", "vocab"}:
        verdict = f"⚠️ The models differ in {', '.join(sorted(differ))}: a tensor-by-tensor merge will likely fail."
    elif "layers" in differ:
        verdict = "⚠️ The layer counts differ: merge matching layer ranges, or stack layers with passthrough."
    else:
        verdict = "✅ Same architecture, layers, hidden size and vocabulary: they can be merged tensor by tensor."
    licenses = {s.license for s in summaries}
    if len(licenses) > 1:
        verdict += " Their licenses differ: check that the merged model may be shared."
    return "\n".join(lines) + "\n\n" + verdict


def _open_model(ref: str, token: str | bool) -> Any:
    """A Hub model (with its Hub LoRA adapter, for `model+adapter`) as a tensor source (`token=False`: anonymously)."""
    return api.open_model(check_model_reference(ref), token=token)


def inspect_model(ref: str, token: str | bool) -> ModelSummary:
    """Summarize a Hub model from configs and safetensors headers only (no weights are read)."""
    source = _open_model(ref, token)
    try:
        return summarize_model(source.label, source.config(), source.tensors(), source.read_file("README.md"))
    finally:
        source.close()


def layer_count(ref: str, token: str | bool) -> int | None:
    """A Hub model's layer count from its config.json, or None when it cannot be read."""
    try:
        source = _open_model(ref, token)
        try:
            return _config_value(source.config(), _LAYER_KEYS)
        finally:
            source.close()
    except Exception:  # noqa: BLE001 - the caller falls back to a default
        return None


def check_models(recipe_text: str, token: str | bool) -> str:
    """The compatibility table of every model the recipe names."""
    try:
        recipe = check_recipe_text(recipe_text)
        refuse_local_shadows(recipe)
    except MergehubError as e:
        return "❌ " + user_message(e, [token])
    summaries, errors = [], {}
    for ref in recipe.referenced_models():
        try:
            summaries.append(inspect_model(str(ref), token))
        except Exception as e:  # noqa: BLE001 - each model's failure is shown in its row
            errors[str(ref)] = user_message(e, [token])
    return compatibility_markdown(summaries, errors)
