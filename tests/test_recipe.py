"""Recipe parsing (mergekit's schema) and parameter setting evaluation."""

from __future__ import annotations

import pytest

from mergehub.recipe import ModelRef, RecipeError, evaluate_setting, load_recipe, parse_recipe

SLERP = """
merge_method: slerp
base_model: org/base
slices:
  - sources:
      - model: org/base
        layer_range: [0, 32]
      - model: org/other@v1.0
        layer_range: [0, 32]
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""


def test_parses_a_lazymergekit_slerp_recipe():
    recipe = parse_recipe(SLERP)
    assert recipe.merge_method == "slerp"
    assert recipe.referenced_models() == [ModelRef("org/base"), ModelRef("org/other", "v1.0")]
    assert recipe.parameter_names() == {"t"}


@pytest.mark.parametrize(
    ("name", "t", "expected"),
    [
        ("model.layers.0.self_attn.q_proj.weight", 0.0, 0.0),
        ("model.layers.0.self_attn.q_proj.weight", 0.125, 0.25),  # halfway between 0 and 0.5
        ("model.layers.9.self_attn.q_proj.weight", 1.0, 1.0),
        ("model.layers.5.mlp.up_proj.weight", 0.5, 0.7),
        ("model.norm.weight", 0.0, 0.5),
    ],
)
def test_gradients_and_filters(name, t, expected):
    setting = parse_recipe(SLERP).parameters["t"]
    assert evaluate_setting(setting, name, t) == pytest.approx(expected)


def test_first_matching_filter_wins_and_unmatched_is_none():
    setting = parse_recipe(
        "merge_method: x\nmodels: [{model: a}]\nparameters: {w: [{filter: attn, value: 1}, {filter: self_attn, "
        "value: 2}]}"
    ).parameters["w"]
    assert evaluate_setting(setting, "self_attn.q", 0) == 1
    assert evaluate_setting(setting, "mlp", 0) is None


def test_scalars_and_discrete_lists():
    assert evaluate_setting(0.3, "x", 0.9) == 0.3
    assert evaluate_setting([True, False], "x", 0.4) is True
    assert evaluate_setting([True, False], "x", 1.0) is False


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("merge_method: linear\nmodels: [{model: a}\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("merge_method: linear\n", "exactly one of `models:`, `slices:` or `modules:`"),
        (
            "merge_method: linear\nmodels: [{model: a}]\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]\n",
            "exactly one of",
        ),
        ("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [3, 1]}]}]\n", "0 <= start < end"),
        ("merge_method: linear\nmodels: [{model: a}]\ndtype: float8\n", "dtype"),
        ("merge_method: linear\nmodels: [{model: 'a+lora+more'}]\n", "with one `\\+`"),
        ("merge_method: linear\nmodels: [{model: 'a+'}]\n", "LoRA reference"),
        ("merge_method: linear\nmodules: {}\n", "exactly one of"),
        ("merge_method: linear\nmodules: {text_decoder: {parameters: {weight: 1}}}\n", "each module exactly one of"),
        (
            "merge_method: linear\nmodels: [{model: a, parameters: {weight: [0.5, {filter: x}]}}]\n",
            r"models\[0\].parameters.weight",
        ),
    ],
)
def test_bad_recipes(text, pattern):
    with pytest.raises(RecipeError, match=pattern):
        parse_recipe(text)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="Cannot read recipe"):
        load_recipe(tmp_path / "nope.yml")


def test_model_ref_parsing(tmp_path):
    assert ModelRef.parse("org/name@abc123") == ModelRef("org/name", "abc123")
    assert str(ModelRef.parse("org/name@main")) == "org/name@main"
    local = tmp_path / "we@ird"
    local.mkdir()
    assert ModelRef.parse(str(local)) == ModelRef(str(local)) and ModelRef(str(local)).is_local


def test_lora_references_split_as_mergekit_does(tmp_path):
    ref = ModelRef.parse("org/model@v1+org/lora@abc")
    assert ref == ModelRef("org/model", "v1", ModelRef("org/lora", "abc"))
    assert ref.model == ModelRef("org/model", "v1") and str(ref) == "org/model@v1+org/lora@abc"
    assert ModelRef.parse(" org/model + org/lora ") == ModelRef("org/model", None, ModelRef("org/lora"))
    adapter = tmp_path / "my-lora"
    adapter.mkdir()
    local = ModelRef.parse(f"org/model+{adapter}")
    assert local.adapter == ModelRef(str(adapter)) and local.adapter.is_local
    plus = tmp_path / "c++model"  # an existing path is taken whole
    plus.mkdir()
    assert ModelRef.parse(str(plus)) == ModelRef(str(plus))
    recipe = parse_recipe("merge_method: linear\nmodels: [{model: 'org/a+org/lora', parameters: {weight: 1}}]\n")
    assert recipe.models[0].model.adapter == ModelRef("org/lora")
    assert recipe.model_dump(mode="json")["models"][0]["model"] == "org/a+org/lora"


LENIENT = """\
merge_method: ties
base_model: org/base
int8_mask: true
paramters:
  density: 0.5
models:
  - model: org/base
  - model: org/chat
    weight: 0.5
    parameters:
      density: "1e-1"
      weight:
        - filter: mlp
          value: 1
          note: mlp only
        - value: 0.5
slices_note: see below
tokenizer:
  source: base
  pad_to_multiple_of: "64"
  sorce: union
"""


def test_keys_outside_the_schema_are_ignored_with_a_located_warning():
    recipe = parse_recipe(LENIENT)
    found = {w.location: w for w in recipe.warnings}
    assert list(found) == [
        "int8_mask",
        "paramters",
        "models[1].weight",
        "models[1].parameters.weight[0].note",
        "slices_note",
        "tokenizer.sorce",
    ]
    assert [w.line for w in recipe.warnings] == [3, 4, 9, 15, 17, 21]
    assert "did you mean `parameters`?" in found["paramters"].message
    assert "did you mean `source`?" in found["tokenizer.sorce"].message
    assert "ignored" in found["int8_mask"].message and "`int8_mask`" in found["int8_mask"].message
    assert str(found["int8_mask"]).startswith("int8_mask (line 3): ")
    assert recipe.tokenizer is not None and recipe.tokenizer.pad_to_multiple_of == 64  # an integer written as text


def test_numbers_as_text_are_read_as_the_parameter_type():
    as_float = float.__call__
    assert evaluate_setting("1e-5", "x", 0.0, as_float) == 1e-5
    assert evaluate_setting(["0", "1e-0"], "x", 0.5, as_float) == 0.5  # a gradient of numbers written as text
    assert (
        evaluate_setting(["1e-5", "x"], "x", 1.0) == "x"
    )  # without a type: discrete labels, as mergekit reads strings


def test_residual_weight_is_read_but_has_no_effect():
    recipe = parse_recipe(
        "merge_method: passthrough\nslices:\n  - sources: [{model: a, layer_range: [0, 2]}]\n    residual_weight: 0.5\n"
    )
    (warning,) = recipe.warnings
    assert warning.location == "slices[0].residual_weight" and warning.line == 4


def test_torch_dtype_names_are_read_as_mergekit_reads_them():
    assert parse_recipe("merge_method: linear\nmodels: [{model: a}]\ndtype: torch.bfloat16\n").dtype == "bfloat16"


MODULES = """\
merge_method: slerp
base_model: org/vlm-a
modules:
  text_decoder:
    slices:
      - sources:
          - {model: org/vlm-a, layer_range: [0, 4]}
          - {model: org/vlm-b, layer_range: [0, 4]}
    parameters: {t: 0.3}
  vision_tower:
    models:
      - model: org/vlm-a
      - model: org/vlm-c
parameters:
  t: 0.5
"""


def test_modules_recipes_name_every_model_and_parameter_block():
    recipe = parse_recipe(MODULES)
    assert recipe.referenced_models() == [ModelRef("org/vlm-a"), ModelRef("org/vlm-b"), ModelRef("org/vlm-c")]
    assert [where for where, _ in recipe.parameter_blocks()] == ["parameters", "modules.text_decoder.parameters"]
    assert recipe.line_of("modules.vision_tower.models[1].model") == 13
    assert recipe.line_of("modules.vision_tower.models[1].parameters.t") == 13  # the nearest enclosing location
    assert not recipe.warnings


def test_recipes_are_equal_when_they_say_the_same():
    assert parse_recipe(MODULES) == parse_recipe("# a comment\n" + MODULES)


def test_recipe_fingerprint_ignores_comments_key_order_and_quoting_but_not_values_or_list_order():
    from mergehub.recipe import recipe_fingerprint

    text = "merge_method: linear\nmodels:\n  - model: org/a\n  - model: org/b\ndtype: float16\n"
    same = "# tuned by hand\ndtype: 'float16'\nmerge_method: \"linear\"\nmodels: [{model: org/a}, {model: org/b}]\n"
    assert recipe_fingerprint(text) == recipe_fingerprint(same)
    assert recipe_fingerprint(text) != recipe_fingerprint(text.replace("float16", "bfloat16"))
    assert recipe_fingerprint(text) != recipe_fingerprint(text.replace("org/a", "org/c").replace("org/b", "org/a"))
    with pytest.raises(RecipeError, match="not valid YAML"):
        recipe_fingerprint("a: [")
