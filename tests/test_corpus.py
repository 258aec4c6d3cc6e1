"""Published recipes, merged by mergekit 0.1.5 and by mergehub on tiny stand-in models: the two must agree.

Every recipe mergekit accepts must merge in mergehub with the same tensors (deterministic methods to 1e-5 in
float32; random methods by names, shapes and kept fraction), and `--dry-run` must plan it with warnings only;
every recipe mergekit refuses must be refused by mergehub with a `MergehubError`. See tests/corpus.py.
"""

from __future__ import annotations

import pytest
import yaml

from mergehub.methods import method_names
from tests.corpus import (
    TinyModels,
    assert_mergekit_yaml_agrees,
    load_corpus,
    repoint,
    run_entry,
    uses_lora,
)

pytest.importorskip("mergekit")

ENTRIES = load_corpus()
# Recipes whose published parameters make both tools run for minutes: karcher's 9999 iterations per tensor.
SLOW = {"hf--vortex5--lunamaid-12b-stage2"}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("corpus-models"))


def _data(text: str) -> dict | None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def test_the_corpus_is_large_sourced_and_covers_what_recipes_use():
    assert len(ENTRIES) >= 60
    assert all(e.source.startswith(("https://huggingface.co/", "https://github.com/")) for e in ENTRIES), [
        e.name for e in ENTRIES if not e.source
    ]
    data = {e.name: _data(e.text) for e in ENTRIES}
    recipes = [d for d in data.values() if d is not None]
    assert set(method_names()) <= {d.get("merge_method") for d in recipes}
    texts = "\n".join(e.text for e in ENTRIES)
    features = {
        "slices": any("slices" in d for d in recipes),
        "gradients": "value: [" in texts or "t: [" in texts,
        "filters": "filter: self_attn" in texts,
        "tokenizer_source": any("tokenizer_source" in d for d in recipes),
        "tokenizer": any("tokenizer" in d for d in recipes),
        "chat_template": any("chat_template" in d for d in recipes),
        "modules": any("modules" in d for d in recipes),
        "lora": any(uses_lora(d) for d in recipes),
        "numbers as text": "1e-5" in texts and "1e-8" in texts,
        "keys outside the schema": "int8_mask: true\ndtype" in texts and "dype:" in texts,
        "vision-language": any(e.shape == "vlm" for e in ENTRIES),
        "invalid YAML": any(d is None for d in data.values()),
    }
    assert all(features.values()), [name for name, present in features.items() if not present]


@pytest.mark.parametrize(
    "entry", [pytest.param(e, id=e.name, marks=[pytest.mark.slow] if e.name in SLOW else []) for e in ENTRIES]
)
def test_mergehub_agrees_with_mergekit(entry, tiny_models, tmp_path, capsys):
    result = run_entry(entry, tiny_models, tmp_path)
    if result.skipped:
        pytest.skip(result.skipped)
    assert not result.problems, f"{entry.source}: " + "; ".join(result.problems)
    assert result.mergehub is not None and result.mergekit is not None
    if not result.mergehub.accepted:
        assert result.mergehub.error.strip(), "a refusal must say why"
        return
    from mergehub.interfaces.cli import main

    capsys.readouterr()
    assert main(["merge", "--dry-run", str(tmp_path / "recipe.yml")]) == 0
    out, err = capsys.readouterr()
    assert "Plan OK" in err and all(f"Warning: {w}" in out for w in result.mergehub.warnings)


# Two recipes through the real `mergekit-yaml` command line, as a user runs it.
CLI_CASES = ["cohere-configurations--neuralpipe-7b-ties", "cohere-configurations--mistral-11b-cc-air-rp"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_mergekit_yaml_command_agrees(name, tiny_models, tmp_path):
    entry = next(e for e in ENTRIES if e.name == name)
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(yaml.safe_dump(repoint(_data(entry.text) or {}, tiny_models, entry.shape), sort_keys=False))
    assert_mergekit_yaml_agrees(recipe, tmp_path)
