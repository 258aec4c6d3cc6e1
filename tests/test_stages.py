"""Multi-stage recipes: stages in dependency order, and every structural mistake refused before anything runs."""

from __future__ import annotations

import pytest

from mergehub.errors import RecipeError
from mergehub.stages import is_multi_stage, parse_stages


def stage(name: str | None, *models: str, method: str = "linear") -> str:
    lines = [f"name: {name}"] if name else []
    lines += [f"merge_method: {method}", "models:"] + [f"  - model: {m}\n    parameters: {{weight: 1}}" for m in models]
    return "\n".join(lines) + "\n"


def test_stages_run_in_dependency_order_final_last():
    text = "---\n".join([stage(None, "b", "org/x"), stage("b", "a", "org/y"), stage("a", "org/m", "org/n")])
    parsed = parse_stages(text)
    assert [s.name for s in parsed.stages] == ["a", "b", None]
    assert parsed.final.needs == ("b",) and parsed.stage("b").needs == ("a",)
    assert parsed.last_use() == {"a": 1, "b": 2}
    assert parsed.stages[0].first_line == 15 and parsed.stages[0].recipe.line_of("models[1].model") == 7


def test_without_an_unnamed_stage_the_final_is_the_one_nobody_uses():
    parsed = parse_stages("---\n".join([stage("a", "org/m", "org/n"), stage("top", "a", "org/o")]))
    assert parsed.final.name == "top"
    with pytest.raises(RecipeError, match="No stage is the final merge: `a`, `b`"):
        parse_stages("---\n".join([stage("a", "org/m", "org/n"), stage("b", "org/o", "org/p")]))


def test_unused_stages_are_skipped_with_a_warning():
    parsed = parse_stages(
        "---\n".join([stage("a", "org/m", "org/n"), stage("spare", "org/o", "org/p"), stage(None, "a", "org/q")])
    )
    assert parsed.names == ("a",)
    assert [(w.location, w.line) for w in parsed.warnings] == [("name", 9)] and "skipped" in parsed.warnings[0].message


def test_a_cycle_is_refused_naming_it():
    text = "---\n".join([stage("a", "b", "org/x"), stage("b", "a", "org/y"), stage(None, "a", "org/z")])
    with pytest.raises(RecipeError, match=r"cycle: a -> b -> a|cycle: b -> a -> b") as info:
        parse_stages(text)
    assert info.value.line is not None


def test_an_unknown_stage_is_refused_with_its_line_and_a_suggestion():
    text = "---\n".join([stage("first", "org/m", "org/n"), stage(None, "frist", "org/o")])
    with pytest.raises(RecipeError, match="`frist` names no stage") as info:
        parse_stages(text)
    assert info.value.line == 11 and "Did you mean stage `first`" in info.value.hint
    assert info.value.message.startswith("The final stage:")


def test_names_must_be_unique_and_one_document_at_most_unnamed():
    with pytest.raises(RecipeError, match="Two stages are named `a`"):
        parse_stages(
            "---\n".join([stage("a", "org/m", "org/n"), stage("a", "org/o", "org/p"), stage(None, "a", "org/q")])
        )
    with pytest.raises(RecipeError, match="Two documents have no `name:`"):
        parse_stages("---\n".join([stage(None, "org/m", "org/n"), stage(None, "org/o", "org/p")]))
    with pytest.raises(RecipeError, match="uses its own output"):
        parse_stages("---\n".join([stage("a", "a", "org/n"), stage(None, "a", "org/p")]))


def test_a_stage_error_names_the_stage_and_the_file_line():
    text = (
        stage("a", "org/m", "org/n")
        + "---\n"
        + "name: b\nmerge_method: linear\nmodels: 3\n"
        + "---\n"
        + stage(None, "a", "b")
    )
    with pytest.raises(RecipeError) as info:
        parse_stages(text)
    assert info.value.message.startswith("Stage `b`:")


def test_pinning_a_stage_output_is_refused():
    with pytest.raises(RecipeError, match="pins a revision of stage `a`"):
        parse_stages("---\n".join([stage("a", "org/m", "org/n"), stage(None, "a@main", "org/q")]))


def test_one_document_is_not_multi_stage_and_comments_make_no_stage():
    assert not is_multi_stage(stage("a", "org/m", "org/n"))
    assert not is_multi_stage("# header\n---\n" + stage("a", "org/m", "org/n"))
    assert is_multi_stage(stage("a", "org/m", "org/n") + "---\n" + stage(None, "a", "org/o"))


def test_aliases_are_refused_in_any_document_with_the_file_line():
    text = (
        stage("a", "org/m", "org/n") + "---\nmerge_method: linear\nmodels:\n"
        "  - {model: a, parameters: &w {weight: 1}}\n  - {model: org/x, parameters: *w}\n"
    )
    with pytest.raises(RecipeError, match="at line 12"):
        parse_stages(text)


def test_a_multi_stage_recipe_is_fingerprinted_by_what_each_stage_says():
    from mergehub.recipe import recipe_fingerprint

    text = stage("a", "org/m", "org/n") + "---\nmerge_method: linear\nmodels: [{model: a}, {model: org/x}]\n"
    restyled = "# comment\n" + text.replace("merge_method: linear", "merge_method: 'linear'  # why")
    assert recipe_fingerprint(restyled) == recipe_fingerprint(text)
    assert recipe_fingerprint(text.replace("org/x", "org/y")) != recipe_fingerprint(text)
