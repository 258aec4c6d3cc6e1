"""Planning checks everything from configs and headers, before any weight is read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mergehub import ModelReferenceError, Plan, PlanError, RecipeError, UnknownMethodError, plan_merge, run_merge
from mergehub.sources.local import LocalSource


def _linear(models: list[Path], **extra) -> dict:
    return {
        "merge_method": "linear",
        "models": [{"model": str(m), "parameters": {"weight": 1}} for m in models],
        **extra,
    }


def test_dry_run_plan_lists_every_tensor_and_bytes(family, write_recipe, monkeypatch):
    def no_reads(self, name):
        raise AssertionError("planning must not read tensor data")

    monkeypatch.setattr(LocalSource, "read", no_reads)
    plan = plan_merge(write_recipe(_linear(family)))
    names = set(LocalSource(family[0]).tensors())
    assert {job.name for job in plan.jobs} == names
    assert all(m.read_bytes == plan.models[0].read_bytes > 0 for m in plan.models)
    text = plan.describe()
    assert "model.layers.3.mlp.down_proj.weight" in text and "Estimated peak memory" in text
    assert Plan.from_json(plan.to_json()) == plan


def test_layer_range_slice_reads_only_its_layers(family, write_recipe):
    plan = plan_merge(
        write_recipe(
            {"merge_method": "passthrough", "slices": [{"sources": [{"model": str(family[0]), "layer_range": [1, 2]}]}]}
        )
    )
    layer_inputs = {i.name.split(".")[2] for job in plan.jobs for i in job.inputs if ".layers." in i.name}
    assert layer_inputs == {"1"}
    assert plan.num_layers == 1 and plan.config["num_hidden_layers"] == 1


def _copy_without(src: Path, dst: Path, drop: str) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    del tensors[drop]
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_missing_tensor_is_named(family, write_recipe, tmp_path):
    broken = _copy_without(family[1], tmp_path / "broken", "model.layers.2.mlp.up_proj.weight")
    with pytest.raises(PlanError, match=r"has no tensor 'model.layers.2.mlp.up_proj.weight'"):
        plan_merge(write_recipe(_linear([family[0], broken])))


def test_shape_mismatch_names_models_and_shapes(family, write_recipe, tmp_path):
    from mergehub.demo import make_tiny_llama

    bigger_vocab = make_tiny_llama(tmp_path / "big", vocab=320)
    with pytest.raises(
        PlanError, match=r"model.embed_tokens.weight: shapes differ .*\[256, 64\].*\[320, 64\].*vocabularies differ"
    ):
        plan_merge(write_recipe(_linear([family[0], bigger_vocab])))


def test_different_layer_counts_suggest_slices(family, write_recipe, tmp_path):
    from mergehub.demo import make_tiny_llama

    deeper = make_tiny_llama(tmp_path / "deep", layers=5)
    with pytest.raises(PlanError, match="different layer counts") as info:
        plan_merge(write_recipe(_linear([family[0], deeper])))
    assert "slices" in info.value.hint


def test_mismatched_architectures(family, write_recipe, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(family[1], other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(PlanError, match="different architectures"):
        plan_merge(write_recipe(_linear([family[0], other])))


@pytest.mark.parametrize(
    ("recipe", "error", "pattern"),
    [
        ({"merge_method": "lienar"}, UnknownMethodError, r"Unknown merge_method 'lienar'"),
        ({"parameters": {"normalize": "maybe"}}, RecipeError, r"parameters.normalize: 'maybe' is not a bool"),
        ({"parameters": {"normalize": 2}}, RecipeError, r"parameters.normalize: 2 is not a bool"),
    ],
)
def test_bad_recipes_name_the_problem(family, write_recipe, recipe, error, pattern):
    with pytest.raises(error, match=pattern):
        plan_merge(write_recipe({**_linear(family[:2]), **recipe}))


def test_missing_required_parameter(family, write_recipe):
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(family[0]), "parameters": {"weight": 1}}, {"model": str(family[1])}],
    }
    with pytest.raises(RecipeError, match=r"Missing required parameter 'weight' for .*finetune-1"):
        plan_merge(write_recipe(recipe))


def test_slerp_with_three_models(family, write_recipe):
    recipe = {
        "merge_method": "slerp",
        "base_model": str(family[0]),
        "models": [{"model": str(m)} for m in family],
        "parameters": {"t": 0.5},
    }
    with pytest.raises(RecipeError, match="slerp merges 2 model"):
        plan_merge(write_recipe(recipe))


def test_base_required(family, write_recipe):
    recipe = {
        "merge_method": "task_arithmetic",
        "models": [{"model": str(m), "parameters": {"weight": 1}} for m in family[1:]],
    }
    with pytest.raises(RecipeError, match="needs a `base_model`"):
        plan_merge(write_recipe(recipe))


def test_layer_range_out_of_bounds(family, write_recipe):
    recipe = {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": str(family[0]), "layer_range": [2, 9]}]}],
    }
    with pytest.raises(RecipeError, match=r"layer_range \[2, 9\] .* out of bounds: it has 4 layers"):
        plan_merge(write_recipe(recipe))


def test_unequal_slice_lengths(family, write_recipe):
    recipe = {
        "merge_method": "slerp",
        "base_model": str(family[0]),
        "slices": [
            {
                "sources": [
                    {"model": str(family[0]), "layer_range": [0, 2]},
                    {"model": str(family[1]), "layer_range": [0, 3]},
                ]
            }
        ],
        "parameters": {"t": 0.5},
    }
    with pytest.raises(RecipeError, match="different numbers of layers"):
        plan_merge(write_recipe(recipe))


def test_missing_model_directory(write_recipe):
    from mergehub import ModelReferenceError

    with pytest.raises(ModelReferenceError, match="not a local directory"):
        plan_merge(
            write_recipe({"merge_method": "linear", "models": [{"model": "./nowhere", "parameters": {"weight": 1}}]})
        )


def test_pickle_only_model_is_refused(family, write_recipe, tmp_path):
    from mergehub import SourceError

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((family[0] / "config.json").read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(SourceError, match="no safetensors weights") as info:
        plan_merge(write_recipe(_linear([family[0], pickled])))
    assert "save_pretrained" in info.value.hint and "pickles" in info.value.hint


def test_failed_plan_leaves_no_output(family, write_recipe, tmp_path):
    with pytest.raises(RecipeError):
        run_merge(write_recipe({**_linear(family), "parameters": {"normalize": "maybe"}}), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.yml"]


def test_parameters_mergekit_ignores_are_warnings_with_their_location(family, write_recipe):
    base, a, b = (str(p) for p in family)
    text = f"""\
merge_method: ties
base_model: {base}
models:
  - model: {base}
    parameters: {{weight: 1, density: 1}}
  - model: {a}
    parameters: {{weight: 0.5, densty: 0.5, normalize: true}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.5}}
parameters:
  embed_slerp: true
  int8_mask: true
"""
    plan = plan_merge(write_recipe(text))
    found = {w.location: w for w in plan.warnings}
    assert set(found) == {
        "models[0].parameters.weight",
        "models[0].parameters.density",
        "models[1].parameters.densty",
        "models[1].parameters.normalize",
        "parameters.embed_slerp",
    }
    assert found["parameters.embed_slerp"].message.startswith(
        "`embed_slerp` is not a ties parameter: ignored (ties takes: "
    )
    assert "did you mean `density`?" in found["models[1].parameters.densty"].message
    assert "not used for the base model" in found["models[0].parameters.weight"].message
    assert "one value for all models" in found["models[1].parameters.normalize"].message
    assert [
        found[k].line for k in ("models[0].parameters.weight", "models[1].parameters.densty", "parameters.embed_slerp")
    ] == [5, 7, 11]
    assert Plan.from_json(plan.to_json()) == plan
    assert "Warning: parameters.embed_slerp (line 11): `embed_slerp` is not a ties parameter" in plan.describe()
    with pytest.raises(RecipeError, match=r"5 thing\(s\) that would be ignored") as info:
        plan_merge(write_recipe(text), strict=True)
    assert info.value.warnings == plan.warnings


def test_numbers_written_as_text_merge_like_numbers(family, write_recipe, tmp_path):
    def recipe(weight, density) -> dict:
        models = [{"model": str(m), "parameters": {"weight": list(weight), "density": density}} for m in family[1:]]
        return {
            "merge_method": "ties",
            "base_model": str(family[0]),
            "models": models,
            "parameters": {"normalize": "true", "lambda": "1"},
        }

    as_text = run_merge(write_recipe(recipe(["5e-1", "1"], "7e-1"), "text.yml"), tmp_path / "text")
    as_numbers = run_merge(write_recipe(recipe([0.5, 1.0], 0.7), "numbers.yml"), tmp_path / "numbers")
    assert [j.params for j in as_text.plan.jobs] == [
        j.params for j in as_numbers.plan.jobs
    ] and not as_text.plan.warnings
    for shard_a, shard_b in zip(as_text.shards, as_numbers.shards, strict=True):
        assert shard_a.sha256 == shard_b.sha256


def test_a_value_that_is_no_number_fails_with_its_path_and_line(family, write_recipe):
    text = f"merge_method: linear\nmodels:\n  - model: {family[0]}\n    parameters:\n      weight: heavy\n"
    with pytest.raises(RecipeError, match=r"models\[0\].parameters.weight: 'heavy' is not a float") as info:
        plan_merge(write_recipe(text))
    assert (info.value.location, info.value.line) == ("models[0].parameters.weight", 5)


def test_base_model_of_a_models_recipe_is_an_input_for_every_method(family, write_recipe):
    """mergekit adds `base_model` to `models:` when it is not listed, even for linear, which then needs its weight."""
    models = [{"model": str(m), "parameters": {"weight": 1}} for m in family[1:]]
    recipe = {"merge_method": "linear", "base_model": str(family[0]), "models": models}
    with pytest.raises(RecipeError, match=r"Missing required parameter 'weight' for .*base"):
        plan_merge(write_recipe(recipe))
    plan = plan_merge(write_recipe({**recipe, "parameters": {"weight": 1}}))
    assert {len(job.inputs) for job in plan.jobs} == {3}


def test_a_missing_parameter_names_the_ignored_key_that_was_probably_meant(family, write_recipe):
    """A `t:` indented at the top level (as published in some cards) is ignored, so slerp has no t."""
    text = (
        f"merge_method: slerp\nbase_model: {family[0]}\nmodels:\n  - model: {family[0]}\n  - model: "
        f"{family[1]}\nparameters:\nt: 0.5\n"
    )
    with pytest.raises(RecipeError, match="Missing required parameter 't'") as info:
        plan_merge(write_recipe(text))
    assert "Ignored in this recipe: t (line 7): `t` is not a recipe key" in (info.value.hint or "")


# -- errors say where they are: location and line are fields, not words -------------------------------


def _text(family: list[Path], lines: list[str]) -> str:
    return "\n".join(lines).format(*family) + "\n"


@pytest.mark.parametrize(
    ("lines", "error", "location", "line"),
    [
        (["merge_method: lienar", "models:", "  - model: {0}"], UnknownMethodError, "merge_method", 1),
        (
            ["merge_method: linear", "models:", "  - model: {0}", "    parameters: {{weight: 1}}", "  - model: {1}"],
            RecipeError,
            "models[1].parameters",
            5,
        ),
        (
            [
                "merge_method: passthrough",
                "slices:",
                "  - sources:",
                "      - model: {0}",
                "        layer_range: [2, 9]",
            ],
            RecipeError,
            "slices[0].sources[0].layer_range",
            5,
        ),
        (
            ["merge_method: task_arithmetic", "models:", "  - model: {1}", "    parameters: {{weight: 1}}"],
            RecipeError,
            "merge_method",
            1,
        ),
        (
            [
                "merge_method: linear",
                "models:",
                "  - model: {0}",
                "    parameters: {{weight: 1}}",
                "  - model: ./nowhere",
                "    parameters: {{weight: 1}}",
            ],
            ModelReferenceError,
            "models[1].model",
            5,
        ),
        (
            [
                "merge_method: linear",
                "chat_template: nonsense",
                "models:",
                "  - model: {0}",
                "    parameters: {{weight: 1}}",
            ],
            RecipeError,
            "chat_template",
            2,
        ),
        (
            [
                "merge_method: linear",
                "models:",
                "  - model: {0}",
                "    parameters: {{weight: 1}}",
                "  bad: [",
                "dtype: x",
            ],
            RecipeError,
            "",
            5,
        ),
    ],
)
def test_an_error_at_one_place_carries_its_location_and_line(family, write_recipe, lines, error, location, line):
    with pytest.raises(error) as info:
        plan_merge(write_recipe(_text(family, lines)))
    assert (info.value.location, info.value.line) == (location, line)
    assert info.value.where() == f"line {line}" + (f" ({location})" if location else "")


def test_each_problem_of_a_failed_plan_carries_its_location_and_line(family, write_recipe, tmp_path):
    from mergehub.demo import make_tiny_llama

    bigger = make_tiny_llama(tmp_path / "big", vocab=320)
    broken = _copy_without(family[1], tmp_path / "broken", "model.layers.2.mlp.up_proj.weight")
    lines = ["merge_method: linear", "models:"] + [
        f"  - model: {m}\n    parameters: {{weight: 1}}" for m in (family[0], bigger, broken)
    ]
    with pytest.raises(PlanError) as info:
        plan_merge(write_recipe("\n".join(lines) + "\n"))
    located = {(p.location, p.line) for p in info.value.problems}
    assert located == {("models[1]", 5), ("models[2]", 7)} and len(info.value.problems) == 3
    assert info.value.headline == "The merge cannot be planned (3 problem(s)):"
    assert all(str(p) in info.value.message for p in info.value.problems)


def test_an_invalid_recipe_lists_each_problem_at_its_line(family, write_recipe):
    text = (
        f"merge_method: linear\nmodels:\n  - parameters: {{weight: 1}}\n  - model: {family[0]}\n    "
        "layer_range: 3\ndtype: float8\n"
    )
    with pytest.raises(RecipeError) as info:
        plan_merge(write_recipe(text))
    assert {(p.location, p.line) for p in info.value.problems} == {("models[0].model", 3), ("dtype", 6)}
