"""The Space's MoE tab: the form makes mergekit-moe YAML, the Space checks it like a recipe, merges and pushes it."""

from __future__ import annotations

import pytest
import yaml
from huggingface_hub import HfApi

from mergehub.errors import ModelReferenceError, RecipeError
from mergehub.interfaces import space
from mergehub.interfaces.space import Session
from mergehub.interfaces.space.moe_form import (
    MAX_EXPERTS,
    ExpertRow,
    MoEForm,
    form_from_values,
    moe_repo_name,
    moe_status,
    moe_yaml,
)
from mergehub.interfaces.space.safety import check_document_text, check_moe_text
from mergehub.moe.config import MoEConfig
from mergehub.recipe import Recipe
from tests.interfaces import test_space as page_tests
from tests.interfaces.test_space import ALICE

seeded, app = page_tests.seeded, page_tests.app  # the page's fixtures: the local Hub's models, the Blocks app

FORM = MoEForm(
    base="org/base",
    experts=(
        ExpertRow("org/ft1", "w1 w2\n\n  w3  \n", "w9"),
        ExpertRow(""),  # a row without a model is left out
        ExpertRow("org/ft2", "w4"),
    ),
    gate_mode="cheap_embed",
    experts_per_token=2,
)


def test_the_form_makes_mergekit_moe_yaml():
    config = yaml.safe_load(moe_yaml(FORM))
    assert config == {
        "base_model": "org/base",
        "gate_mode": "cheap_embed",
        "dtype": "bfloat16",
        "experts_per_token": 2,
        "experts": [
            {"source_model": "org/ft1", "positive_prompts": ["w1 w2", "w3"], "negative_prompts": ["w9"]},
            {"source_model": "org/ft2", "positive_prompts": ["w4"]},
        ],
    }
    assert isinstance(check_moe_text(moe_yaml(FORM)), MoEConfig)
    assert moe_status(moe_yaml(FORM)) == "✅ Valid MoE config."
    assert moe_repo_name(FORM) == "base-ft1-ft2-2x-moe"
    values = ["org/ft1", "w1", "", "org/ft2", "w2", ""] + [""] * (3 * MAX_EXPERTS - 6)
    form = form_from_values("org/base", "random", 1, "float32", 2, values)
    assert [row.model for row in form.experts] == ["org/ft1", "org/ft2"] and form.experts_per_token == 1


def test_moe_configs_are_checked_as_the_space_checks_recipes():
    assert isinstance(check_document_text(moe_yaml(FORM)), MoEConfig)
    assert isinstance(check_document_text("merge_method: linear\nmodels:\n  - model: org/a\n"), Recipe)
    with pytest.raises(ModelReferenceError, match="not allowed here"):
        check_moe_text(moe_yaml(MoEForm(base="/etc/base", experts=FORM.experts)))
    same = MoEForm(base="org/base", experts=(ExpertRow("org/ft1", "w1"), ExpertRow("org/ft2", "w1")))
    with pytest.raises(RecipeError, match="same for every expert"):
        check_moe_text(moe_yaml(same))
    many = MoEForm(base="org/base", experts=tuple(ExpertRow(f"org/m{i}", f"w{i}") for i in range(MAX_EXPERTS + 1)))
    with pytest.raises(RecipeError, match="at most 8"):
        check_moe_text(moe_yaml(many))
    assert moe_status(moe_yaml(same)).startswith("❌ ")


def test_dry_run_checks_the_experts_from_headers(seeded):
    random = moe_yaml(MoEForm(base="org/base", experts=FORM.experts, gate_mode="random"))
    shown = space.dry_run(random, False)
    assert "MoE: Mixtral, 2 experts, 2 per token" in shown and shown.endswith("Plan OK: no problems found.")
    assert "tokenizer" in space.dry_run(moe_yaml(FORM), False)  # prompts need the base's tokenizer


def test_the_moe_tab_assembles_and_pushes(seeded, app):
    handler = next(fn for fn in app.fns.values() if fn.name == "on_moe_form")
    assert next(fn for fn in app.fns.values() if fn.name == "on_moe_merge").api_name == "merge_moe"
    values = [getattr(c, "value", None) for c in handler.inputs]
    text, note, repo, *rows = handler.fn(*values)
    assert "source_model: org/mistral-math" in text and note == "✅ Valid MoE config."
    assert sum(row["visible"] for row in rows) == 3

    config = moe_yaml(MoEForm(base="org/base", experts=FORM.experts, gate_mode="random"))
    status, log, card = list(space.merge(config, "moe", False, Session(), ALICE))[-1]
    assert "✅ Pushed to [alice/moe]" in status, log
    assert "Plan: moe merge" in log
    assert "mergekit_moe_config.yml" in HfApi().list_repo_files("alice/moe")
    assert "## Experts" in card
