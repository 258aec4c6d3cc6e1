"""The CLI: dry runs, merges, summaries, and errors as messages with hints and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mergehub.interfaces.cli import main, parse_size


def _recipe(family) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1}} for m in family]}


def test_dry_run_prints_plan(family, write_recipe, capsys):
    assert main(["merge", "--dry-run", str(write_recipe(_recipe(family)))]) == 0
    out, err = capsys.readouterr()
    assert "Plan: linear merge of 3 models" in out and "model.norm.weight" in out
    assert "no problems" in err


def test_merge_prints_summary(family, write_recipe, tmp_path, capsys):
    assert (
        main(
            [
                "merge",
                str(write_recipe(_recipe(family))),
                str(tmp_path / "out"),
                "--no-progress",
                "--out-shard-size",
                "100KB",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Merged" in out and "B/s)" in out and "peak RSS" in out and out.count("sha256") >= 2


def test_errors_are_one_message_and_a_hint(family, write_recipe, capsys):
    recipe = write_recipe({**_recipe(family), "merge_method": "nope"})
    assert main(["merge", str(recipe), "out"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: Unknown merge_method 'nope'") and "hint: Use one of:" in err and "Traceback" not in err
    )


def test_debug_shows_traceback(family, write_recipe):
    with pytest.raises(Exception, match="Unknown merge_method"):
        main(["--debug", "merge", str(write_recipe({**_recipe(family), "merge_method": "nope"})), "out"])


def test_console_script_runs(family, write_recipe):
    result = subprocess.run([sys.executable, "-m", "mergehub", "methods"], capture_output=True, text=True, check=True)
    assert "slerp" in result.stdout and "task_arithmetic" in result.stdout


@pytest.mark.parametrize(
    ("text", "value"), [("2GB", 2 * 10**9), ("500MB", 5 * 10**8), ("1GiB", 2**30), ("123", 123), ("1.5kb", 1500)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


def _lenient(family) -> dict:
    return {**_recipe(family), "int8_mask": True, "parameters": {"embed_slerp": True}}


def test_dry_run_shows_what_is_ignored_in_text_and_json(family, write_recipe, capsys):
    recipe = str(write_recipe(_lenient(family)))
    assert main(["merge", "--dry-run", recipe]) == 0
    out, err = capsys.readouterr()
    assert "Warning: int8_mask (line " in out and "Warning: parameters.embed_slerp (line " in out
    assert "no problems found; 2 warning(s)" in err
    assert main(["merge", "--dry-run", "--json", recipe]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert [(w["location"], type(w["line"])) for w in warnings] == [("int8_mask", int), ("parameters.embed_slerp", int)]


def test_strict_refuses_a_recipe_with_warnings(family, write_recipe, tmp_path, capsys):
    recipe = str(write_recipe(_lenient(family)))
    assert main(["merge", "--dry-run", "--strict", recipe]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: The recipe sets 2 thing(s) that would be ignored (strict mode):")
    assert "  parameters.embed_slerp (line " in err and "hint:" in err
    assert main(["merge", "--strict", recipe, str(tmp_path / "out")]) == 1 and not (tmp_path / "out").exists()
    assert main(["merge", recipe, str(tmp_path / "out"), "--no-progress"]) == 0
    assert "warning: parameters.embed_slerp (line " in capsys.readouterr().err


# -- every failure is one message and a hint; anything else is a bug ------------------------------------


def test_an_error_at_one_place_of_the_recipe_names_its_line(family, write_recipe, capsys):
    text = "merge_method: linear\nmodels:\n" + "".join(
        f"  - model: {m}\n    parameters: {{weight: heavy}}\n" for m in family
    )
    recipe = write_recipe(text)
    assert main(["merge", "--dry-run", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert f"  at {recipe}:4 (models[0].parameters.weight)" in err and "hint: Write `weight` as a float" in err


def test_an_unexpected_error_is_reported_as_a_bug_with_the_debug_command(family, write_recipe, monkeypatch, capsys):
    from mergehub import api

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(api, "plan_merge", broken)
    recipe = str(write_recipe(_recipe(family)))
    assert main(["merge", "--dry-run", recipe]) == 70
    err = capsys.readouterr().err
    assert err.startswith("error: ZeroDivisionError: division by zero\nthis is a bug in mergehub")
    assert f"  mergehub --debug merge --dry-run {recipe}\n" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "merge", "--dry-run", recipe])


def test_a_card_that_cannot_be_written_is_one_message(family, write_recipe, tmp_path, capsys):
    from mergehub import run_merge

    merged = run_merge(write_recipe(_recipe(family[:2])), tmp_path / "merged").out_dir
    (merged / "README.md").unlink()
    (merged / "README.md").mkdir()  # writing the card fails as a full or read-only disk would
    assert main(["card", str(merged)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: Cannot write {merged / 'README.md'}") and "hint:" in err and "Traceback" not in err
    assert main(["card", str(tmp_path)]) == 1
    assert "has no mergekit_config.yml" in capsys.readouterr().err


def test_hub_failures_while_pushing_a_card_are_one_message(family, write_recipe, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    from mergehub import api, run_merge
    from mergehub.sources.hub import HTTPError

    merged = run_merge(write_recipe(_recipe(family[:2])), tmp_path / "merged").out_dir
    monkeypatch.setattr(api, "build_card", lambda target, **kwargs: "card")
    for failure in (HTTPError("connection refused"), OSError("network is unreachable")):

        def whoami(self, *args, failure=failure, **kwargs):
            raise failure

        monkeypatch.setattr(HfApi, "whoami", whoami)
        assert main(["card", "alice/merged", "--push"]) == 1
        err = capsys.readouterr().err
        assert (
            err.startswith("error: Pushing the card to alice/merged failed:")
            and "hint:" in err
            and "Traceback" not in err
        )
    assert merged.is_dir()


def test_recarding_a_hub_repo_that_is_not_there_is_one_message(hub, capsys):
    assert main(["card", "alice/nothing-here"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: alice/nothing-here: repo 'alice/nothing-here' not found") and "hint:" in err
    assert "Traceback" not in err
