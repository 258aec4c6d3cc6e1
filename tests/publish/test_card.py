"""The merge card: parent data, license resolution, and metadata that huggingface_hub parses back."""

from __future__ import annotations

import itertools

import pytest
from huggingface_hub import ModelCard

from mergehub.api import run_merge
from mergehub.plan import ModelEntry, Plan
from mergehub.publish.card import (
    EvalScore,
    MergeCard,
    ParentCard,
    merge_card,
    parent_card,
    render_card,
    resolve_license,
)

SHA_BASE, SHA_B = "a" * 40, "b" * 40
RECIPE = """merge_method: slerp
base_model: org/base@main
models:
  - model: org/base@main
  - model: org/b
  - model: /data/local-model
parameters:
  t: 0.5
"""
SCORED_README = b"""---
license: apache-2.0
model-index:
- name: b
  results:
  - task: {type: text-generation}
    dataset: {name: ARC, type: ai2_arc}
    metrics:
    - {type: acc_norm, value: 0.61}
---
# b
"""


def _plan() -> Plan:
    models = (
        ModelEntry("org/base@main", SHA_BASE, 1),
        ModelEntry("org/b", SHA_B, 1),
        ModelEntry("/data/local-model", None, 1),
    )
    return Plan(
        "slerp",
        models,
        jobs=(),
        shards=(),
        config={},
        config_model="org/base@main",
        base_model="org/base@main",
        input_dtype=None,
        num_layers=None,
        peak_memory_bytes=0,
        recipe_text=RECIPE,
        seed=3,
    )


def _parents() -> list[ParentCard]:
    return [
        parent_card("org/base@main", SHA_BASE, b"---\nlicense: apache-2.0\n---\n"),
        parent_card("org/b", SHA_B, SCORED_README),
        parent_card("/data/local-model", None, None),
    ]


def _card(parents=None, **changes) -> MergeCard:
    card = merge_card(
        "alice/merged",
        _plan(),
        [],
        command="mergehub merge mergekit_config.yml ./out --seed 3",
        parents=_parents() if parents is None else parents,
        lineage_mermaid="graph TD\n  n0 --> n1",
    )
    return MergeCard(**{**card.__dict__, **changes}) if changes else card


def test_parent_card_reads_license_scores_and_pin():
    parent = parent_card("org/b@v1", SHA_B, SCORED_README, gated=True)
    expected = ParentCard("org/b", SHA_B, "apache-2.0", gated=True, scores={"ARC (acc_norm)": 0.61}, is_hub=True)
    assert parent == expected
    local = parent_card("./models/x", None, b"---\nlicense: mit\n---\n")
    assert (local.ref, local.is_hub, local.license) == ("./models/x", False, "mit")


@pytest.mark.parametrize(
    "readme",
    [
        None,
        b"",
        b"# no front matter",
        b"---\nlicense: [unclosed\n---\n",
        b"---\n- a list\n---\n",
        b"---\n1: x\n---\n",
        b"---\nlicense: [mit, gpl]\nmodel-index: nonsense\nbase_model: 3\n---\n",
        b"\xff\xfe---\nlicense: mit\n",
    ],
)
def test_malformed_parent_card_gives_no_license_and_no_scores(readme):
    parent = parent_card("org/m", SHA_B, readme)
    assert (parent.license, parent.scores, parent.non_commercial) == (None, {}, False)


@pytest.mark.parametrize(
    "front, license_id",
    [
        ("license: cc-by-nc-4.0", "cc-by-nc-4.0"),
        ("license: other\nlicense_name: qwen-research", "other (qwen-research)"),
    ],
)
def test_non_commercial_licenses_are_recognised(front, license_id):
    parent = parent_card("org/m", SHA_B, f"---\n{front}\n---\n".encode())
    assert (parent.license, parent.non_commercial) == (license_id, True)


def test_common_license_is_kept():
    parents = [ParentCard("org/a", license="apache-2.0", is_hub=True), ParentCard("org/b", license="apache-2.0")]
    assert resolve_license(parents) == ("apache-2.0", [])


@pytest.mark.parametrize(
    "b, shown",
    [
        (ParentCard("org/b", license="mit"), "org/b: mit"),
        (ParentCard("org/b", license="apache-2.0", non_commercial=True), "org/b: apache-2.0 (non-commercial)"),
        (ParentCard("org/b", license="apache-2.0", gated=True), "org/b: apache-2.0 (gated)"),
        (ParentCard("org/b"), "org/b: unknown"),
    ],
)
def test_conflicting_or_restricted_licenses_give_other_and_name_each_parent(b, shown):
    assert resolve_license([ParentCard("org/a", license="apache-2.0"), b]) == ("other", ["org/a: apache-2.0", shown])


def test_other_license_shared_by_all_parents_still_warns():
    license_id, warnings = resolve_license([ParentCard("org/a", license="other"), ParentCard("org/b", license="other")])
    assert (license_id, len(warnings)) == ("other", 2)


def test_parents_are_base_first_then_recipe_order_whatever_the_input_order():
    parents = _parents()
    permutations = itertools.permutations(parents + parents[:1])
    orders = {tuple(p.ref for p in _card(list(perm)).parents) for perm in permutations}
    orders.add(tuple(p.ref for p in _card(set(parents)).parents))
    assert orders == {("org/base", "org/b", "/data/local-model")}


def test_card_construction_keeps_the_base_first_without_repeats():
    a, base = ParentCard("org/a"), ParentCard("org/base")
    card = _card(parents=[a], base="org/base")
    assert MergeCard(**{**card.__dict__, "parents": (a, base, a, base)}).parents == (base, a)


def test_metadata_round_trips_through_huggingface_hub():
    data = ModelCard(str(render_card(_card()))).data
    assert data.base_model == ["org/base", "org/b"]  # the local parent is no Hub id
    assert data.base_model_relation == "merge"
    assert data.library_name == "transformers"
    assert data.license == "other"  # apache-2.0 + unknown local license
    assert data.tags == ["merge", "mergekit", "mergehub"]
    assert data.eval_results is None


def test_body_shows_parents_recipe_reproducibility_lineage_and_usage():
    text = render_card(_card(shards=(("model-00001-of-00001.safetensors", "f" * 64),))).text
    assert "[slerp](https://en.wikipedia.org/wiki/Slerp)" in text
    assert "[org/base](https://huggingface.co/org/base) as the base" in text
    assert f"[`{SHA_B[:10]}`](https://huggingface.co/org/b/commit/{SHA_B})" in text
    assert "| `/data/local-model` (local) | — | unknown | — |" in text
    assert "ARC (acc_norm): 0.61" in text
    assert "> - /data/local-model: unknown" in text and "> - org/base: apache-2.0" in text
    assert "```yaml\n" + RECIPE.strip() + "\n```" in text
    assert "seed: 3" in text and "`" + "f" * 64 + "`" in text
    assert "```bash\nmergehub merge mergekit_config.yml ./out --seed 3\n```" in text
    assert "```mermaid\ngraph TD\n  n0 --> n1\n```" in text
    assert 'AutoModelForCausalLM.from_pretrained("alice/merged")' in text


def test_eval_results_become_a_model_index():
    scores = (
        EvalScore(
            "text-generation",
            "ARC Challenge",
            "allenai/ai2_arc",
            "acc_norm",
            0.55,
            "ARC-Challenge",
            "test",
            25,
            "lm-eval",
            "https://github.com/EleutherAI/lm-evaluation-harness",
        ),
    )
    data = ModelCard(str(render_card(_card(eval_results=scores)))).data
    [result] = data.eval_results
    assert (result.task_type, result.dataset_name, result.dataset_type, result.metric_type, result.metric_value) == (
        "text-generation",
        "ARC Challenge",
        "allenai/ai2_arc",
        "acc_norm",
        0.55,
    )
    assert (result.dataset_config, result.dataset_split) == ("ARC-Challenge", "test")
    assert result.dataset_args == {"num_few_shot": 25}
    assert data.model_name == "merged" and result.source_name == "lm-eval"


def test_local_only_merge_has_no_base_model_metadata():
    card = _card(parents=[ParentCard("/data/x", license="mit")], base="/data/x")
    data = ModelCard(str(render_card(card))).data
    assert (data.base_model, data.get("base_model_relation"), data.license) == (None, None, "mit")


def test_recipe_with_backticks_keeps_its_fence():
    recipe = RECIPE + 'chat_template: "```{{ messages }}```"\n'
    assert "````yaml\n" in render_card(_card(recipe_yaml=recipe)).text


def test_card_passes_the_hub_yaml_validation(hub):
    render_card(_card()).validate()


def test_card_of_a_real_merge(family, write_recipe, tmp_path):
    recipe = {
        "merge_method": "linear",
        "base_model": str(family[0]),
        "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in reversed(family)],
    }
    result = run_merge(write_recipe(recipe), tmp_path / "out")
    text = (result.out_dir / "mergekit_config.yml").read_text()
    parents = {parent_card(m.ref, m.revision, None) for m in result.plan.models}
    card = merge_card("alice/m", result.plan, result.shards, command="x", parents=parents)
    assert card.recipe_yaml == text and card.seed == 0
    assert [p.ref for p in card.parents] == [str(family[0]), str(family[2]), str(family[1])]
    assert card.shards == tuple((s.filename, s.sha256) for s in result.shards)
    assert [name for name, _ in card.versions] == ["mergehub", "torch", "transformers"]


def test_provenance_block_records_recipe_hash_and_pinned_parents(family, write_recipe, tmp_path):
    from huggingface_hub import ModelCard

    from mergehub import run_merge
    from mergehub.recipe import recipe_sha256

    recipe = write_recipe(
        {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1}} for m in family[:2]]}
    )
    run_merge(recipe, tmp_path / "out", seed=3)
    data = ModelCard((tmp_path / "out" / "README.md").read_text()).data.to_dict()["mergehub"]
    assert data["recipe_sha256"] == recipe_sha256(recipe.read_text())
    assert (
        data["parents"] == {str(family[0]): None, str(family[1]): None}
        and data["seed"] == 3
        and data["method"] == "linear"
    )


def test_the_card_lists_what_the_merge_ignored(family, write_recipe, tmp_path):
    from huggingface_hub import ModelCard

    models = [{"model": str(m), "parameters": {"weight": 1}} for m in family[:2]]
    run_merge(
        write_recipe({"merge_method": "linear", "models": models, "parameters": {"int8_mask": True}}), tmp_path / "out"
    )
    text = (tmp_path / "out" / "README.md").read_text()
    (ignored,) = ModelCard(text).data.to_dict()["mergehub"]["ignored"]
    assert (
        ignored["location"] == "parameters.int8_mask"
        and ignored["line"] > 0
        and "not a linear parameter" in ignored["message"]
    )
    assert "Ignored by the merge, as mergekit ignores them:" in text and "- `parameters.int8_mask` (line " in text
