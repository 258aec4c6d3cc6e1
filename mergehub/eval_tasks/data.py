"""The data of mergehub's shipped lm-eval tasks: `<task>.<split>.jsonl` files beside this module.

lm-eval imports this file by path (`custom_dataset: !function data.facts` in a task YAML) and calls
the function with the task's metadata as keyword arguments, which are ignored here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["facts", "arithmetic", "load"]

_HERE = Path(__file__).parent
_SPLITS = ("train", "test")


def load(stem: str) -> Any:
    """The `train` and `test` splits of `<stem>.<split>.jsonl`, as a `datasets.DatasetDict`."""
    import datasets

    splits = {}
    for split in _SPLITS:
        lines = (_HERE / f"{stem}.{split}.jsonl").read_text(encoding="utf-8").splitlines()
        splits[split] = datasets.Dataset.from_list([json.loads(line) for line in lines if line.strip()])
    return datasets.DatasetDict(splits)


def facts(**_: Any) -> Any:
    """The data of `mergehub_facts`: question, four choices, index of the answer."""
    return load("facts")


def arithmetic(**_: Any) -> Any:
    """The data of `mergehub_arithmetic`: question and answer (a whole number, as text)."""
    return load("arithmetic")
