"""The non-tensor files of a merged model: config, generation config, tokenizer and the recipe."""

from __future__ import annotations

import json
from pathlib import Path

from mergehub.plan import Plan
from mergehub.sources.base import TensorSource
from mergehub.vocab import OutputTokenizer, tokenizer_files

__all__ = ["RECIPE_FILENAME", "write_artifacts"]

RECIPE_FILENAME = "mergekit_config.yml"


def write_artifacts(
    directory: Path, plan: Plan, sources: list[TensorSource], recipe_text: str, *,
    tokenizer: OutputTokenizer | None, chat_template: str | None,
) -> list[str]:
    """Write config.json, generation_config.json, tokenizer files and the recipe; return the file names.

    The tokenizer is the one built for the recipe's vocabulary, or else the base model's files, copied.
    """
    written = ["config.json", RECIPE_FILENAME]
    (directory / "config.json").write_text(json.dumps(plan.config, indent=2) + "\n")
    (directory / RECIPE_FILENAME).write_text(recipe_text)
    generation = sources[plan.config_model].read_file("generation_config.json")
    if generation is not None:
        (directory / "generation_config.json").write_bytes(generation)
        written.append("generation_config.json")
    if tokenizer is not None:
        files = tokenizer.files
    else:
        files = tokenizer_files(sources[plan.config_model])
    for filename, data in files.items():
        (directory / filename).write_bytes(data)
        written.append(filename)
    if chat_template is not None:
        (directory / "chat_template.jinja").write_text(chat_template)
        written.append("chat_template.jinja")
    return sorted(set(written))
