"""Fixtures of the experiment tests: tiny models with a tokenizer (so lm-eval can score them) and a linear recipe."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import WORDS, make_tokenizer

LIMIT = 3
"""Documents per task: enough to score, few enough to keep each candidate under a second."""


@pytest.fixture(scope="session")
def scored_family(family: list[Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The session's base and two fine-tunes, copied with a WordLevel tokenizer beside each."""
    root = tmp_path_factory.mktemp("scored-family")
    tokenizer = make_tokenizer(WORDS)
    models = []
    for source in family:
        target = root / source.name
        shutil.copytree(source, target)
        for name, data in tokenizer.items():
            (target / name).write_bytes(data)
        models.append(target)
    return models


@pytest.fixture
def linear_recipe(scored_family: list[Path], tmp_path: Path) -> Path:
    """A linear merge of the base and the first fine-tune, half and half, in bfloat16."""
    base, first = scored_family[0], scored_family[1]
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(base), "parameters": {"weight": 0.5}},
            {"model": str(first), "parameters": {"weight": 0.5}},
        ],
        "dtype": "bfloat16",
    }
    path = tmp_path / "linear.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


PERPLEXITY_TASK = """\
task: tiny_perplexity
dataset_path: json
dataset_kwargs:
  data_files:
    test: tiny_perplexity.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""


@pytest.fixture(scope="session")
def perplexity_task(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A rolling log-likelihood task over sentences of the tiny vocabulary: a continuous score that tells variants
    apart."""
    import json

    folder = tmp_path_factory.mktemp("tasks")
    lines = [" ".join(f"w{(7 * i + 3 * k) % 46}" for k in range(12)) for i in range(6)]
    (folder / "tiny_perplexity.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    (folder / "tiny_perplexity.yaml").write_text(PERPLEXITY_TASK)
    return str(folder / "tiny_perplexity.yaml")
