"""The CLI: dry runs, merges, summaries, and errors as messages with hints and exit codes."""

from __future__ import annotations

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
    assert main(["merge", str(write_recipe(_recipe(family))), str(tmp_path / "out"), "--no-progress", "--out-shard-size", "100KB"]) == 0
    out = capsys.readouterr().out
    assert "Merged" in out and "GB/s" in out and "peak RSS" in out and out.count("sha256") >= 2


def test_errors_are_one_message_and_a_hint(family, write_recipe, capsys):
    recipe = write_recipe({**_recipe(family), "merge_method": "nope"})
    assert main(["merge", str(recipe), "out"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown merge_method 'nope'") and "hint: Use one of:" in err and "Traceback" not in err


def test_debug_shows_traceback(family, write_recipe):
    with pytest.raises(Exception, match="Unknown merge_method"):
        main(["--debug", "merge", str(write_recipe({**_recipe(family), "merge_method": "nope"})), "out"])


def test_console_script_runs(family, write_recipe):
    result = subprocess.run([sys.executable, "-m", "mergehub", "methods"], capture_output=True, text=True, check=True)
    assert "slerp" in result.stdout and "task_arithmetic" in result.stdout


@pytest.mark.parametrize(("text", "value"), [("2GB", 2 * 10**9), ("500MB", 5 * 10**8), ("1GiB", 2**30), ("123", 123), ("1.5kb", 1500)])
def test_parse_size(text, value):
    assert parse_size(text) == value
