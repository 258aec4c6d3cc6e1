"""The non-tensor files of a merged model: config, generation config, tokenizer and the recipe."""

from __future__ import annotations

import json

from mergehub.plan import Plan
from mergehub.sources.base import TensorSource
from mergehub.vocab import OutputTokenizer, tokenizer_files

__all__ = ["RECIPE_FILENAME", "artifact_files"]

RECIPE_FILENAME = "mergekit_config.yml"


def artifact_files(
    plan: Plan, sources: list[TensorSource], recipe_text: str, *, tokenizer: OutputTokenizer | None, chat_template: str | None,
) -> dict[str, bytes]:
    """config.json, generation_config.json, tokenizer files and the recipe, by file name.

    The tokenizer is the one built for the recipe's vocabulary, or else the base model's files, copied.
    """
    files = {"config.json": (json.dumps(plan.config, indent=2) + "\n").encode(), RECIPE_FILENAME: recipe_text.encode()}
    generation = sources[plan.config_model].read_file("generation_config.json")
    if generation is not None:
        files["generation_config.json"] = generation
    files.update(tokenizer.files if tokenizer is not None else tokenizer_files(sources[plan.config_model]))
    if chat_template is not None:
        files["chat_template.jinja"] = chat_template.encode()
    return files

