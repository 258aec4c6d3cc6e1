"""The non-tensor files of a merged model: config, generation config, tokenizer and the recipe."""

from __future__ import annotations

import json
from pathlib import Path

from mergehub.errors import RecipeError
from mergehub.plan import Plan
from mergehub.sources.base import TensorSource

__all__ = ["TOKENIZER_FILES", "RECIPE_FILENAME", "write_artifacts", "check_chat_template"]

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
RECIPE_FILENAME = "mergekit_config.yml"


def check_chat_template(template: str | None) -> None:
    """Reject chat templates mergehub cannot write yet (built-in names need a template library)."""
    if template is not None and "{{" not in template and "{%" not in template:
        raise RecipeError(
            f"chat_template {template!r} is not a Jinja template; built-in template names are not supported yet.",
            hint="Paste the Jinja template itself, or remove `chat_template`.",
        )


def write_artifacts(directory: Path, plan: Plan, sources: list[TensorSource], recipe_text: str, chat_template: str | None) -> list[str]:
    """Write config.json, generation_config.json, tokenizer files and the recipe; return the file names."""
    written = ["config.json"]
    (directory / "config.json").write_text(json.dumps(plan.config, indent=2) + "\n")
    generation = sources[plan.config_model].read_file("generation_config.json")
    if generation is not None:
        (directory / "generation_config.json").write_bytes(generation)
        written.append("generation_config.json")
    tokenizer = sources[plan.tokenizer_model]
    for filename in TOKENIZER_FILES:
        data = tokenizer.read_file(filename)
        if data is not None:
            (directory / filename).write_bytes(data)
            written.append(filename)
    if chat_template is not None:
        (directory / "chat_template.jinja").write_text(chat_template)
        written.append("chat_template.jinja")
    (directory / RECIPE_FILENAME).write_text(recipe_text)
    written.append(RECIPE_FILENAME)
    return sorted(set(written))
