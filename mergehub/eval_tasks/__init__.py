"""lm-eval task definitions shipped with mergehub: small, offline, with their data beside them.

Each task is an lm-eval YAML file here whose `custom_dataset` reads JSON Lines files from this
folder (`data.py`), so the tasks run with no network, from mergehub or from lm-eval itself
(`lm-eval run --include_path <this folder> --tasks mergehub_facts`).

- `mergehub_facts`: 42 general-knowledge questions, four choices each, scored by log-likelihood (`acc`, `acc_norm`).
- `mergehub_arithmetic`: 40 additions and subtractions of numbers up to 20, generated and scored by exact match.

Both carry the tag `mergehub`, which runs them together.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TASKS_DIR", "SHIPPED_TASKS"]

TASKS_DIR = Path(__file__).parent
SHIPPED_TASKS = ("mergehub_arithmetic", "mergehub_facts")
