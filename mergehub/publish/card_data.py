"""The one reader of model cards: huggingface_hub's `ModelCard`/`ModelCardData`, our `mergehub:` record, and scores.

Every card mergehub reads (a parent's, a pushed merge's, the source of a GGUF export) goes
through `read_card_data`; its front matter is someone else's YAML, so it is bounded and may not
use aliases (`safe_yaml`). Nothing here writes a card: `card.py` does.
"""

from __future__ import annotations

from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from mergehub import safe_yaml
from mergehub.errors import RecipeError

__all__ = ["read_card_data", "card_license", "card_scores", "mergehub_record", "MERGEHUB_KEY"]

MERGEHUB_KEY = "mergehub"
"""The front-matter key of a merge's machine-readable record (recipe hash, pinned parents, seed...)."""


def read_card_data(readme: bytes | str | None) -> ModelCardData | None:
    """The metadata of a README.md; None when it is absent or cannot be parsed."""
    if readme is None:
        return None
    text = (readme.decode("utf-8", errors="replace") if isinstance(readme, bytes) else readme).lstrip("\ufeff")
    front = REGEX_YAML_BLOCK.search(text)  # huggingface_hub's own front-matter pattern
    try:
        if front:  # a card is someone else's YAML: no aliases, bounded size, checked before ModelCard loads it
            safe_yaml.load(front[2], what="The card's metadata")
        return ModelCard(text, ignore_metadata_errors=True).data
    except (ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError, RecipeError):
        return None


def card_license(data: ModelCardData) -> str | None:
    """The card's license id; `other` carries its `license_name` in parentheses when given."""
    license_id = data.license if isinstance(data.license, str) else None
    name = data.license_name
    return f"other ({name})" if license_id == "other" and isinstance(name, str) and name else license_id


def card_scores(data: ModelCardData | None) -> tuple[EvalResult, ...]:
    """The card's `model-index` results that hold a number, in card order."""
    results = (data.eval_results or []) if data else []
    return tuple(
        r
        for r in results
        if isinstance(r, EvalResult)
        and isinstance(r.metric_value, (int, float))
        and not isinstance(r.metric_value, bool)
    )


def mergehub_record(data: ModelCardData | None) -> dict[str, Any]:
    """The card's `mergehub:` record (written by `card.provenance`); empty when it has none."""
    record = data.get(MERGEHUB_KEY) if data else None
    return record if isinstance(record, dict) else {}
