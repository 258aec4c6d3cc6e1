"""Tiny merges of each GGUF family, with their GGUF files written in the same pass (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gguf")

from mergehub import MergeResult, run_merge  # noqa: E402
from tests.gguf_export.models import make_family_model, tokenizer_for  # noqa: E402

TYPES = ("f16", "q8_0")


def merge_family(root: Path, family: str, types: tuple[str, ...] = TYPES) -> MergeResult:
    """A linear merge of a base and a fine-tune of `family`, with GGUF files of `types`."""
    tokenizer = tokenizer_for(family)
    base = make_family_model(family, root / "base", seed=0, tokenizer=tokenizer)
    tuned = make_family_model(family, root / "tuned", seed=1, base=base, tokenizer=tokenizer)
    recipe = root / "recipe.yml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {base}\n    parameters: {{weight: 0.6}}\n"
        f"  - model: {tuned}\n    parameters: {{weight: 0.4}}\ndtype: float32\n"
    )
    return run_merge(recipe, root / "merged", gguf_types=types)


@pytest.fixture(scope="session")
def gguf_merges(tmp_path_factory: pytest.TempPathFactory):
    """family -> its merge with F16 and Q8_0 GGUF files, made on first use."""
    made: dict[str, MergeResult] = {}

    def get(family: str) -> MergeResult:
        if family not in made:
            made[family] = merge_family(tmp_path_factory.mktemp(f"gguf-{family}"), family)
        return made[family]

    return get
