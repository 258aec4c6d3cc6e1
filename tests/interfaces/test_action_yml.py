"""action.yml run for real: each `run:` step with bash, in order, against a git checkout and the local Hub; the
metadata and the example workflow validated against GitHub's schemas (vendored by check-jsonschema)."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import HfApi

from tests.interfaces.test_action import RECIPE, ZERO, commit, repo  # noqa: F401 - `repo` is a fixture

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "recipe-factory" / ".github" / "workflows" / "merge.yml"
CI = ROOT / ".github" / "workflows" / "ci.yml"
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def evaluate(expression: str, context: dict[str, Any]) -> str:
    """The few expression forms action.yml uses: `a.b.c` lookups and `a.b != ''` / `a.b == ''` tests."""
    test = re.fullmatch(r"([\w.-]+)\s*(==|!=)\s*''", expression)
    if test:
        empty = evaluate(test[1], context) == ""
        return "true" if empty == (test[2] == "==") else "false"
    assert re.fullmatch(r"[\w.-]+", expression), f"unsupported expression {expression!r}"
    value: Any = context
    for part in expression.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return str(value)


def substitute(text: str, context: dict[str, Any]) -> str:
    return EXPRESSION.sub(lambda m: evaluate(m[1], context), text)


def read_outputs(path: Path) -> dict[str, str]:
    """`name=value` lines and `name<<DELIMITER` blocks, as the runner reads `$GITHUB_OUTPUT`."""
    found, lines = {}, iter(path.read_text().splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            found[name] = "\n".join(iter(lambda: next(lines), delimiter))
        elif "=" in line:
            name, value = line.split("=", 1)
            found[name] = value
    return found


def cached_environment(venv: Path, digest: str) -> None:
    """Stand-in for actions/cache hitting: a virtual environment that sees this test's mergehub and torch."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "outer.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    (venv / "mergehub-source").write_text(digest + "\n")


def run_action(inputs: dict[str, str], workspace: Path, event: str, payload: dict, work: Path) -> dict[str, Any]:
    """Run action.yml's steps as the runner would (`uses:` steps by stand-ins); returns outputs, summary and log."""
    metadata = yaml.safe_load((ROOT / "action.yml").read_text())
    defaults = {name: str(spec.get("default", "")) for name, spec in metadata["inputs"].items()}
    temp = work / "runner-temp"
    temp.mkdir(exist_ok=True)
    (work / "event.json").write_text(json.dumps(payload))
    summary, env_file, path_file = work / "summary.md", work / "env", work / "path"
    for name in (summary, env_file, path_file):
        name.write_text("")
    context: dict[str, Any] = {
        "inputs": {**defaults, **inputs},
        "github": {"action_path": str(ROOT), "workspace": str(workspace), "event_name": event},
        "runner": {"temp": str(temp), "os": "Linux", "arch": "X64"},
        "steps": {},
    }
    log = []
    for index, step in enumerate(metadata["runs"]["steps"]):
        if "if" in step and evaluate(step["if"].strip("${} "), context) != "true":
            continue
        outputs: dict[str, str] = {}
        if "uses" in step:
            with_ = {k: substitute(str(v), context) for k, v in (step.get("with") or {}).items()}
            if step["uses"].startswith("actions/setup-python@"):
                assert with_["update-environment"] == "false"  # the caller's Python is left alone
                outputs = {"python-path": sys.executable, "python-version": platform.python_version()}
            elif step["uses"].startswith("actions/cache@"):
                assert with_["key"].startswith("mergehub-venv-Linux-X64-py") and context["steps"]["source"]
                cached_environment(Path(with_["path"]), context["steps"]["source"]["outputs"]["digest"])
            else:
                raise AssertionError(f"no stand-in for {step['uses']}")
        else:
            assert step["shell"] == "bash"
            output_file = work / f"output-{index}"
            output_file.write_text("")
            env = {
                **os.environ,
                **{k: substitute(str(v), context) for k, v in (step.get("env") or {}).items()},
                "GITHUB_OUTPUT": str(output_file),
                "GITHUB_STEP_SUMMARY": str(summary),
                "GITHUB_ENV": str(env_file),
                "GITHUB_PATH": str(path_file),
                "GITHUB_WORKSPACE": str(workspace),
                "GITHUB_EVENT_NAME": event,
                "GITHUB_EVENT_PATH": str(work / "event.json"),
                "RUNNER_TEMP": str(temp),
            }
            script = substitute(step["run"], context)
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                cwd=workspace,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            log.append(done.stdout + done.stderr)
            if done.returncode != 0:
                return {"failed": step.get("name"), "code": done.returncode, "log": "\n".join(log)}
            outputs = read_outputs(output_file)
        if "id" in step:
            context["steps"][step["id"]] = {"outputs": outputs}
    action_outputs = {name: substitute(spec["value"], context) for name, spec in metadata["outputs"].items()}
    return {
        "failed": None,
        "outputs": action_outputs,
        "summary": summary.read_text(),
        "env": env_file.read_text() + path_file.read_text(),
        "log": "\n".join(log),
    }


def test_action_yml_steps_merge_a_pushed_recipe_into_the_local_hub(hub, family, repo, tmp_path):  # noqa: F811
    hub.add_repo("bob/base", family[0])
    hub.add_repo("bob/tuned", family[1])
    head = commit(repo, {"recipes/from action.yml": RECIPE.format(a="bob/base", b="bob/tuned")})
    result = run_action({"hf-token": "tok-alice"}, repo, "push", {"before": ZERO, "after": head}, tmp_path)
    assert result["failed"] is None, result["log"]
    assert json.loads(result["outputs"]["pushed-repos"]) == ["alice/from-action"], result["log"]
    results = json.loads(result["outputs"]["results"])
    assert results[0]["status"] == "merged" and results[0]["commit_url"]
    assert "| `recipes/from action.yml` | [alice/from-action](" in result["summary"]
    assert HfApi().file_exists("alice/from-action", "model.safetensors") or HfApi().list_repo_files("alice/from-action")
    assert "already installed (cached environment)" in result["log"]  # the cache stand-in was used
    assert result["env"] == ""  # nothing leaks into the caller's later steps
    assert "tok-alice" not in result["log"] + result["summary"]

    again = run_action({"hf-token": "tok-alice"}, repo, "push", {"before": ZERO, "after": head}, tmp_path)
    assert again["failed"] is None and again["outputs"]["pushed-repos"] == "[]"
    assert "⏭️ skipped" in again["summary"]


def _schema_check(schema: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("check_jsonschema")
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, paths)],
        capture_output=True,
        text=True,
    )


def test_action_yml_and_the_example_workflow_follow_githubs_schemas(tmp_path):
    checked = _schema_check("vendor.github-actions", ROOT / "action.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = _schema_check("vendor.github-workflows", EXAMPLE, CI)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(EXAMPLE.read_text().replace("runs-on:", "runs_on:"))
    assert _schema_check("vendor.github-workflows", broken).returncode != 0  # the check does check


def test_third_party_actions_are_pinned_by_commit():
    for path in (ROOT / "action.yml", EXAMPLE, CI):
        uses = re.findall(r"^\s*(?:-\s*)?uses:\s*(\S+)(.*)$", path.read_text(), re.MULTILINE)
        third_party = [(ref, comment) for ref, comment in uses if ref.startswith("actions/")]
        assert third_party, path
        for ref, comment in third_party:
            assert re.fullmatch(r"actions/[\w-]+@[0-9a-f]{40}", ref) and re.search(r"# v\d+\.\d+\.\d+", comment), ref


def test_action_init_writes_the_example_workflow_with_a_pinned_uses(tmp_path, capsys):
    from mergehub.interfaces.cli import main
    from mergehub.interfaces.workflow import installed_action, workflow_yaml

    assert EXAMPLE.read_text() == workflow_yaml("OWNER/REPO@REF")  # the example is what init writes
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert main(["action", "init", str(tmp_path), "--uses", f"someone/mergehub@{sha}"]) == 0
    written = tmp_path / ".github" / "workflows" / "merge.yml"
    assert f"        uses: someone/mergehub@{sha}\n" in written.read_text()
    assert _schema_check("vendor.github-workflows", written).returncode == 0
    assert main(["action", "init", str(tmp_path), "--uses", f"someone/mergehub@{sha}"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["action", "init", str(tmp_path / "other"), "--uses", "not a reference"]) == 1
    assert "--uses OWNER/REPO@REF" in capsys.readouterr().err
    recorded = json.dumps(
        {"url": "https://github.com/someone/mergehub.git", "vcs_info": {"vcs": "git", "commit_id": sha}}
    )
    assert installed_action(recorded) == f"someone/mergehub@{sha}"
    assert installed_action(json.dumps({"url": "file:///src/mergehub", "dir_info": {"editable": True}})) is None
