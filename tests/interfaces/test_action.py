"""The GitHub Action: which recipes an event touches, merges pushed to the local Hub, reruns skipped, PR annotations."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import HfApi

from mergehub.errors import MergehubError
from mergehub.interfaces.action import (
    UP_TO_DATE,
    Published,
    annotation,
    changed_recipes,
    main,
    merge_reason,
    parse_published,
    read_inputs,
    target_repo,
)
from mergehub.recipe import recipe_fingerprint, recipe_sha256

ZERO = "0" * 40
RECIPE = """\
# A linear merge of a base and its fine-tune.
merge_method: linear
models:
  - model: {a}
    parameters:
      weight: 0.6
  - model: {b}
    parameters:
      weight: 0.4
"""


# -- throwaway git repos and a GitHub-like run -----------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An empty git repository, standing in for the workflow's checkout."""
    path = tmp_path / "checkout"
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    for key, value in (("user.email", "ci@example.com"), ("user.name", "ci"), ("commit.gpgsign", "false")):
        _git(path, "config", key, value)
    return path


def commit(repo: Path, files: dict[str, str | None], *, moves: dict[str, str] | None = None) -> str:
    """`git mv` the moves, write (or, for None, delete) the files, commit; return the sha."""
    for old, new in (moves or {}).items():
        (repo / new).parent.mkdir(parents=True, exist_ok=True)
        _git(repo, "mv", old, new)
    for name, text in files.items():
        if text is None:
            _git(repo, "rm", "-q", name)
            continue
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
        _git(repo, "add", name)
    _git(repo, "commit", "-q", "--allow-empty", "-m", "change")
    return _git(repo, "rev-parse", "HEAD")


def _outputs(text: str) -> dict[str, str]:
    found = re.findall(r"^([\w-]+)<<(ghadelimiter_[\w-]+)\n(.*?)\n\2$", text, re.DOTALL | re.MULTILINE)
    return {name: value for name, _, value in found}


def run(
    repo: Path, event: str, payload: dict, capsys, space_client: Any = None, **inputs: str
) -> tuple[int, str, str, dict[str, str]]:
    """Run the action as GitHub would; returns (exit code, log, job summary, step outputs)."""
    work = repo.parent
    (work / "event.json").write_text(json.dumps(payload))
    for name in ("summary.md", "output.txt"):
        (work / name).write_text("")
    env = {
        "GITHUB_WORKSPACE": str(repo),
        "GITHUB_EVENT_NAME": event,
        "GITHUB_EVENT_PATH": str(work / "event.json"),
        "GITHUB_STEP_SUMMARY": str(work / "summary.md"),
        "GITHUB_OUTPUT": str(work / "output.txt"),
        **{f"INPUT_{name.upper()}": value for name, value in inputs.items()},
    }
    code = main(env, space_client=space_client)
    return code, capsys.readouterr().out, (work / "summary.md").read_text(), _outputs((work / "output.txt").read_text())


@pytest.fixture
def parents(hub, family) -> tuple[str, str]:
    """Two public parents on the local Hub, owned by bob: a base and a fine-tune."""
    hub.add_repo("bob/base", family[0])
    hub.add_repo("bob/tuned", family[1])
    return "bob/base", "bob/tuned"


# -- which recipes changed -------------------------------------------------------------------------------


def test_changed_recipes_follow_adds_edits_renames_and_skip_deletions(repo):
    first = commit(repo, {"recipes/a.yml": "a", "recipes/b.yml": "b", "recipes/c.yml": "c", "docs/x.yml": "x"})
    second = commit(
        repo,
        {"recipes/a.yml": "a2", "recipes/c.yml": None, "recipes/new/d.yaml": "d", "notes.txt": "n"},
        moves={"recipes/b.yml": "recipes/moved/b2.yml"},
    )
    log: list[str] = []
    changed = changed_recipes(repo, first, second, ("recipes/**/*.yml", "recipes/**/*.yaml"), log.append)
    assert changed == ["recipes/a.yml", "recipes/moved/b2.yml", "recipes/new/d.yaml"]
    assert any("recipes/c.yml was deleted" in line for line in log)
    assert any("renamed to recipes/moved/b2.yml" in line for line in log)
    # A new branch, and a `before` the shallow clone lacks: every recipe.
    everything = ["recipes/a.yml", "recipes/moved/b2.yml", "recipes/new/d.yaml"]
    assert changed_recipes(repo, ZERO, second, ("recipes/**/*.yml", "recipes/**/*.yaml"), log.append) == everything
    assert changed_recipes(repo, "f" * 40, second, ("recipes/**/*.yml", "recipes/**/*.yaml"), log.append) == everything
    assert any("not in the clone" in line for line in log)


def test_force_push_compares_with_the_merge_base(repo):
    root = commit(repo, {"recipes/a.yml": "a", "recipes/b.yml": "b"})
    dropped = commit(repo, {"recipes/b.yml": "b2"})  # the commit the force push throws away
    _git(repo, "reset", "-q", "--hard", root)  # this is the throwaway test repo, not the project
    after = commit(repo, {"recipes/a.yml": "a2"})
    log: list[str] = []
    assert changed_recipes(repo, dropped, after, ("recipes/*.yml",), log.append) == ["recipes/a.yml"]
    assert any("not an ancestor" in line and f"merge-base {root[:10]}" in line for line in log)


# -- pure helpers ----------------------------------------------------------------------------------------


def test_target_repo_from_comment_or_stem():
    assert target_repo("recipes/My Merge.yml", "merge_method: linear", lambda: "alice") == "alice/My-Merge"
    assert (
        target_repo("recipes/x.yml", "# mergehub: repo=org/custom\nmerge_method: linear", lambda: "alice")
        == "org/custom"
    )
    assert target_repo("recipes/x.yml", "#mergehub: repo = short\n", lambda: "alice") == "alice/short"
    with pytest.raises(MergehubError, match="not a valid Hub repo name") as info:
        target_repo("recipes/x.yml", "# mergehub: repo=a/b/c\n", lambda: "alice")
    assert "# mergehub: repo=" in info.value.hint


def test_published_record_from_front_matter_or_from_the_card_body():
    recipe = "merge_method: linear\n"
    sha_a, sha_b = "a" * 40, "b" * 40
    with_block = (
        f"---\nmergehub:\n  recipe_sha256: {recipe_sha256(recipe)}\n  parents:\n    org/a: {sha_a}\n   "
        " ./local: null\n---\n# x\n"
    )
    assert parse_published(with_block, None) == Published(recipe_sha256(recipe), {"org/a": sha_a})
    body = (
        "---\nlicense: mit\n---\n## Parents\n\n| Model | Revision | License | Scores |\n|---|---|---|---|\n"
        "| [org/a](https://huggingface.co/org/a) (base) | "
        f"[`{sha_a[:10]}`](https://huggingface.co/org/a/commit/{sha_a}) | mit | — |\n"
        "| [org/b](https://huggingface.co/org/b) | "
        f"[`{sha_b[:10]}`](https://huggingface.co/org/b/commit/{sha_b}) | mit | — |\n"
        "| `./local` (local) | — | unknown | — |\n"
    )
    published = parse_published(body, recipe)
    assert published == Published(recipe_sha256(recipe), {"org/a": sha_a, "org/b": sha_b}, recipe_fingerprint(recipe))
    both = {"org/a": sha_a, "org/b": sha_b}
    assert merge_reason(published, recipe, both) is None
    assert merge_reason(published, "merge_method: slerp\n", both) == "the recipe changed"
    assert "org/b bbbbbbb → ccccccc" in merge_reason(published, recipe, {"org/a": sha_a, "org/b": "c" * 40})
    assert merge_reason(None, "x", {}) == "not merged yet"
    assert parse_published(None, None) is None


def test_inputs_both_spellings_and_annotation_escaping(tmp_path, capsys):
    inputs = read_inputs(
        {
            "INPUT_HF-TOKEN": "secret",
            "INPUT_PRIVATE": "true",
            "INPUT_RECIPES": "a/*.yml\nb/**/*.yaml",
            "INPUT_EVAL_TASKS": "arc, hellaswag",
        }
    )
    assert inputs.token == "secret" and inputs.private and inputs.recipes == ("a/*.yml", "b/**/*.yaml")
    assert inputs.eval_tasks == ("arc", "hellaswag") and not inputs.rerun and not inputs.overwrite_foreign
    assert (
        annotation("error", "50% bad\nHint: fix", file="r,1.yml", line=3)
        == "::error file=r%2C1.yml,line=3::50%25 bad%0AHint: fix"
    )
    assert main({"INPUT_RERUN": "maybe", "GITHUB_WORKSPACE": str(tmp_path)}) == 2
    assert "::error::Input `rerun` is 'maybe'" in capsys.readouterr().out
    assert main({"INPUT_FORCE": "true", "GITHUB_WORKSPACE": str(tmp_path)}) == 2
    out = capsys.readouterr().out
    assert "::error::Input `force` was split in two." in out and "overwrite-foreign: true" in out


def test_action_yml_passes_every_input_and_the_shim_runs_main(repo, monkeypatch, capsys):
    import runpy

    import yaml

    metadata = yaml.safe_load((Path(__file__).parents[2] / "action.yml").read_text())
    step = next(s for s in metadata["runs"]["steps"] if s.get("id") == "mergehub")
    assert step["run"] == '"$MERGEHUB_PYTHON" -m mergehub.action'
    for name in metadata["inputs"]:
        if name != "python-version":
            assert step["env"][f"INPUT_{name.upper().replace('-', '_')}"] == f"${{{{ inputs.{name} }}}}"
    defaults = {f"INPUT_{n.upper().replace('-', '_')}": spec["default"] for n, spec in metadata["inputs"].items()}
    assert read_inputs(defaults).recipes == ("recipes/**/*.yml", "recipes/**/*.yaml")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(repo))
    monkeypatch.setenv("GITHUB_EVENT_NAME", "schedule")
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("mergehub.action", run_name="__main__")
    assert exited.value.code == 0 and "nothing to do" in capsys.readouterr().out


# -- against the local Hub -------------------------------------------------------------------------------


def test_push_merges_changed_recipes_skips_reruns_and_force_remerges(hub, parents, repo, capsys):
    a, b = parents
    first = commit(
        repo,
        {
            "recipes/first.yml": RECIPE.format(a=a, b=b),
            "recipes/team/second.yaml": "# mergehub: repo=org/renamed\n" + RECIPE.format(a=b, b=a),
            "README.md": "not a recipe",
        },
    )
    new_branch = {"ref": "refs/heads/main", "before": ZERO, "after": first, "created": True}
    code, log, summary, outputs = run(repo, "push", new_branch, capsys, hf_token="tok-alice")
    assert code == 0, log
    assert json.loads(outputs["pushed-repos"]) == ["alice/first", "org/renamed"]
    assert HfApi().repo_exists("alice/first") and HfApi().repo_exists("org/renamed")
    assert "| `recipes/first.yml` | [alice/first](" in summary and summary.count("✅ merged") == 2
    assert "tok-alice" not in log + summary + json.dumps(outputs)

    # Rerunning the same event: both are up to date.
    code, log, summary, outputs = run(repo, "push", new_branch, capsys, hf_token="tok-alice")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == []
    assert summary.count("⏭️ skipped") == 2 and "up to date" in log
    commits_before = len(HfApi().list_repo_commits("alice/first"))

    # A push that edits one recipe merges that one only; `force` re-merges an up-to-date one.
    second = commit(repo, {"recipes/first.yml": RECIPE.format(a=a, b=b).replace("0.6", "0.7")})
    code, log, summary, outputs = run(repo, "push", {"before": first, "after": second}, capsys, hf_token="tok-alice")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/first"] and "the recipe changed" in log
    assert len(HfApi().list_repo_commits("alice/first")) == commits_before + 1
    code, _, _, outputs = run(repo, "workflow_dispatch", {}, capsys, hf_token="tok-alice", rerun="true")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/first", "org/renamed"]
    results = json.loads(outputs["results"])
    assert {r["status"] for r in results} == {"merged"} and all(r["commit_url"] for r in results)


def test_schedule_remerges_only_when_an_unpinned_parent_moved(hub, parents, repo, capsys):
    a, b = parents
    pinned = f"{b}@{hub.revision_sha(b)}"
    head = commit(
        repo, {"recipes/follows.yml": RECIPE.format(a=a, b=b), "recipes/pinned.yml": RECIPE.format(a=a, b=pinned)}
    )
    code, log, _, outputs = run(repo, "workflow_dispatch", {"after": head}, capsys, hf_token="tok-alice")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/follows", "alice/pinned"], log

    code, log, summary, outputs = run(repo, "schedule", {}, capsys, hf_token="tok-alice")
    assert code == 0 and outputs["pushed-repos"] == "[]" and "nothing to do" in log and "No recipe" in summary

    hub.commit_files(b, {"README.md": b"---\nlicense: mit\n---\nA new revision."})
    code, log, summary, outputs = run(
        repo, "schedule", {}, capsys, hf_token="tok-alice", rerun_if_parents_changed="true"
    )
    assert code == 0, log
    assert json.loads(outputs["pushed-repos"]) == ["alice/follows"]
    assert f"parents moved: {b}" in log and "⏭️ skipped" in summary


def test_lora_adapter_is_a_parent_whose_new_commit_triggers_a_rerun(hub, parents, family, repo, capsys, tmp_path):
    from tests.helpers import make_lora

    a, b = parents
    hub.add_repo("bob/lora", make_lora(family[0], tmp_path / "lora", r=2, lora_alpha=4, target_modules=["q_proj"]))
    head = commit(repo, {"recipes/styled.yml": RECIPE.format(a=f"{a}+bob/lora", b=b)})
    code, log, _, outputs = run(repo, "workflow_dispatch", {"after": head}, capsys, hf_token="tok-alice")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/styled"], log
    code, log, _, outputs = run(repo, "schedule", {}, capsys, hf_token="tok-alice", rerun_if_parents_changed="true")
    assert code == 0 and outputs["pushed-repos"] == "[]", log
    hub.commit_files("bob/lora", {"README.md": b"---\nlicense: mit\n---\nA new revision of the adapter."})
    code, log, _, outputs = run(repo, "schedule", {}, capsys, hf_token="tok-alice", rerun_if_parents_changed="true")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/styled"] and "parents moved: bob/lora" in log


def test_extraction_files_are_extracted_pushed_and_rerun_like_recipes(hub, parents, repo, capsys):
    a, b = parents
    extraction = f"# An adapter of the fine-tune.\nextract_lora:\n  base: {a}\n  model: {b}\n  rank: 4\n"
    head = commit(repo, {"recipes/tuned-lora.yml": extraction})
    code, log, summary, outputs = run(repo, "pull_request", {"after": head}, capsys)
    assert code == 0 and "LoRA extraction from 2 model(s)" in log and "✔️ validated" in summary
    code, log, _, outputs = run(repo, "workflow_dispatch", {"after": head}, capsys, hf_token="tok-alice")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/tuned-lora"], log
    assert "extracting a LoRA adapter (not merged yet)" in log
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(HfApi().list_repo_files("alice/tuned-lora"))
    code, log, summary, outputs = run(repo, "workflow_dispatch", {}, capsys, hf_token="tok-alice")
    assert code == 0 and outputs["pushed-repos"] == "[]" and "up to date: same recipe, same parent commits" in log
    bad = commit(repo, {"recipes/tuned-lora.yml": extraction + "  rnak: 3\n"})
    code, log, summary, _ = run(repo, "pull_request", {"after": bad}, capsys)
    assert code == 1 and "::error file=recipes/tuned-lora.yml,line=6::extract_lora.rnak: `rnak` is not an option" in log
    broken = commit(repo, {"recipes/tuned-lora.yml": extraction + "  rank: [4\n"})
    code, log, summary, _ = run(repo, "pull_request", {"after": broken}, capsys)
    assert code == 1 and "::error file=recipes/tuned-lora.yml,line=" in log and "is not valid YAML" in log
    assert "Traceback" not in log


def test_pull_request_validates_anonymously_and_annotates_the_bad_lines(
    hub, parents, repo, capsys, monkeypatch, tmp_path
):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)  # a fork's pull request gets no secrets
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    a, b = parents
    base = commit(repo, {"recipes/old.yml": RECIPE.format(a=a, b=b)})
    head = commit(
        repo,
        {
            "recipes/good.yml": RECIPE.format(a=a, b=b),
            "recipes/bad-method.yml": RECIPE.format(a=a, b=b).replace("merge_method: linear", "merge_method: nope"),
            "recipes/bad-param.yml": RECIPE.format(a=a, b=b).replace("weight: 0.4", "weight: 0.4\n      density: 0.5"),
            "recipes/bad-key.yml": RECIPE.format(a=a, b=b) + "tokenizer_sorce: base\n",
        },
    )
    event = {"pull_request": {"base": {"sha": base}, "head": {"sha": head}}}
    code, log, summary, outputs = run(repo, "pull_request", event, capsys)
    assert code == 1
    assert "::error file=recipes/bad-method.yml,line=2::Unknown merge_method 'nope'.%0AHint: Use one of:" in log
    # what mergekit ignores is a warning at its line, from the warning's fields
    assert (
        "::warning file=recipes/bad-param.yml,line=10::models[1].parameters.density: `density` is not a linear "
        "parameter" in log
    )
    assert "::warning file=recipes/bad-key.yml,line=10::tokenizer_sorce: `tokenizer_sorce` is not a recipe key" in log
    assert "did you mean `tokenizer_source`?" in log
    assert "recipes/old.yml" not in log  # unchanged by the pull request
    assert (
        "| `recipes/good.yml` | [alice/good](" not in summary
        and "`recipes/good.yml` | <your user>/good | ✔️ validated" in summary
    )
    assert summary.count("❌ failed") == 1 and summary.count("✔️ validated") == 3 and outputs["pushed-repos"] == "[]"
    assert not HfApi().repo_exists("alice/good")

    code, log, summary, _ = run(repo, "pull_request", event, capsys, strict="true")
    assert code == 1 and summary.count("❌ failed") == 3
    assert (
        "::error file=recipes/bad-param.yml,line=10::strict: models[1].parameters.density: `density` is not a "
        "linear parameter" in log
    )
    assert "::error file=recipes/bad-key.yml,line=10::strict: tokenizer_sorce: " in log


def test_failed_recipe_fails_the_run_but_not_the_others(hub, parents, repo, capsys):
    a, b = parents
    head = commit(
        repo,
        {"recipes/ok.yml": RECIPE.format(a=a, b=b), "recipes/missing.yml": RECIPE.format(a=a, b="bob/nothing-here")},
    )
    code, log, summary, outputs = run(repo, "push", {"before": ZERO, "after": head}, capsys, hf_token="tok-alice")
    assert code == 1 and json.loads(outputs["pushed-repos"]) == ["alice/ok"]
    assert re.search(r"::error file=recipes/missing.yml,line=7::.*bob/nothing-here", log)
    assert "❌ failed" in summary and not HfApi().repo_exists("alice/missing")


def test_two_recipes_for_one_repo_and_a_bad_repo_comment_fail_where_they_are_written(repo, capsys):
    body = "merge_method: linear\nmodels:\n  - model: org/a\n"
    head = commit(
        repo,
        {
            "recipes/llama/slerp.yml": body,
            "recipes/mistral/slerp.yml": body,
            "recipes/odd.yml": "# A recipe\n# mergehub: repo=a/b/c\n" + body,
        },
    )
    code, log, _, _ = run(
        repo, "workflow_dispatch", {"after": head}, capsys, namespace="team"
    )  # fails before any Hub call
    assert code == 1
    assert "::error file=recipes/llama/slerp.yml,line=1::recipes/llama/slerp.yml and recipes/mistral/slerp.yml" in log
    assert "would both push to team/slerp." in log
    assert "::error file=recipes/mistral/slerp.yml,line=1::recipes/mistral/slerp.yml and recipes/llama/slerp.yml" in log
    assert "::error file=recipes/odd.yml,line=2::'a/b/c' is not a valid Hub repo name." in log


def test_an_unexpected_error_is_reported_as_a_bug_with_its_traceback(repo, capsys, monkeypatch):
    from mergehub.interfaces import action

    head = commit(repo, {"recipes/a.yml": "merge_method: linear\nmodels:\n  - model: org/a\n"})
    monkeypatch.setattr(action, "target_repo", lambda *args: 1 / 0)
    code, log, summary, _ = run(
        repo, "workflow_dispatch", {"after": head}, capsys, namespace="team", hf_token="tok-secret"
    )
    assert code == 1 and "❌ failed" in summary  # one recipe's bug does not stop the others
    assert "::error file=recipes/a.yml,line=1::ZeroDivisionError: division by zero. This is a bug in mergehub" in log
    assert "::group::Traceback (for the bug report)" in log and 'File "' in log

    monkeypatch.setattr(action, "summary_markdown", lambda *args: 1 / 0)
    code, log, _, _ = run(repo, "workflow_dispatch", {"after": head}, capsys, namespace="team", hf_token="tok-secret")
    assert code == 70 and "::error::ZeroDivisionError: division by zero. This is a bug in mergehub" in log
    assert "tok-secret" not in log


# -- dispatching to a Space ------------------------------------------------------------------------------


class FakeJob:
    def __init__(self, outputs: list[tuple[str, str, str]]) -> None:
        self.outputs = outputs

    def __iter__(self):
        return iter(self.outputs)

    def result(self) -> tuple[str, str, str]:
        return self.outputs[-1]


class FakeSpace:
    """gradio_client's `Client`, as far as the action uses it."""

    def __init__(self, endpoints: tuple[str, ...], outputs: list[tuple[str, str, str]]) -> None:
        self.endpoints, self.outputs, self.calls = endpoints, outputs, []

    def __call__(self, space_id: str, token: str) -> FakeSpace:
        self.calls.append(("client", space_id, token))
        return self

    def view_api(self, return_format: str, print_info: bool) -> dict:
        return {"named_endpoints": {name: {} for name in self.endpoints}}

    def submit(self, *args: Any, api_name: str) -> FakeJob:
        self.calls.append(("submit", args, api_name))
        return FakeJob(self.outputs)


def test_dispatch_to_space_streams_the_space_log(hub, parents, repo, capsys):
    a, b = parents
    text = RECIPE.format(a=a, b=b)
    commit(repo, {"recipes/remote.yml": text})
    space = FakeSpace(
        ("/on_merge",),
        [
            ("⏳ Planning...", "Checking 2 model(s)...", ""),
            ("⏳ Merging...", "Checking 2 model(s)...\nPlan: linear merge\ntensors 3/39", ""),
            (
                "✅ Pushed to [alice/remote](x)",
                "Checking 2 model(s)...\nPlan: linear merge\nMerged 39 tensors\nPushed commit abc: url",
                "",
            ),
        ],
    )
    code, log, summary, outputs = run(
        repo, "workflow_dispatch", {}, capsys, space, hf_token="tok-alice", dispatch_to_space="alice/mergehub"
    )
    assert code == 0, log
    assert space.calls == [
        ("client", "alice/mergehub", "tok-alice"),
        ("submit", (text, "alice/remote", False), "/on_merge"),
    ]
    assert log.count("[alice/mergehub] Plan: linear merge") == 1 and "[alice/mergehub] Pushed commit abc: url" in log
    assert "tensors 3/39" not in log  # a live progress line, replaced before it was final
    assert json.loads(outputs["pushed-repos"]) == ["alice/remote"] and "✅ merged" in summary

    failing = FakeSpace(("/on_merge",), [("❌ Unknown merge_method 'x'.", "Failed: Unknown merge_method 'x'.", "")])
    code, log, _, _ = run(
        repo, "workflow_dispatch", {}, capsys, failing, hf_token="tok-alice", dispatch_to_space="alice/mergehub"
    )
    assert code == 1 and "did not push: Unknown merge_method 'x'." in log
    code, log, _, _ = run(
        repo,
        "workflow_dispatch",
        {},
        capsys,
        FakeSpace(("/other",), []),
        hf_token="tok-alice",
        dispatch_to_space="alice/x",
    )
    assert code == 1 and "has no mergehub merge endpoint" in log


def test_dispatch_reaches_the_space_app_with_the_token(hub, parents, repo, capsys, monkeypatch):
    """The real gradio_client against mergehub's own Space app, served locally: the merge runs there, as alice."""
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    import socket
    import warnings

    import gradio.oauth

    from mergehub.interfaces import space

    # A browser session would carry this token; the action has none, so the Space must use the one it is given.
    session = {
        "access_token": "not-a-token",
        "token_type": "bearer",
        "expires_in": 3600,
        "scope": "openid",
        "expires_at": 2**31,
        "userinfo": {"preferred_username": "alice", "name": "Alice", "profile": "", "picture": ""},
    }
    monkeypatch.setattr(gradio.oauth, "_get_mocked_oauth_info", lambda: session)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        demo = space.build_app()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    try:
        a, b = parents
        commit(repo, {"recipes/on-space.yml": RECIPE.format(a=a, b=b)})
        url = f"http://127.0.0.1:{port}/"
        code, log, _, outputs = run(repo, "workflow_dispatch", {}, capsys, hf_token="tok-alice", dispatch_to_space=url)
    finally:
        demo.close()
    assert code == 0, log
    assert f"[{url}] Pushed commit" in log and json.loads(outputs["pushed-repos"]) == ["alice/on-space"]
    assert HfApi().repo_exists("alice/on-space") and "tok-alice" not in log


def test_eval_tasks_are_scored_into_the_pushed_card(hub, parents, repo, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    from mergehub import api

    seen = {}

    def fake_evaluate_merge(result, tasks, **options):
        seen["tasks"] = list(tasks)
        card = result.out_dir / "README.md"
        card.write_text(card.read_text() + "\n## Evaluation\nscored\n")
        return None, None

    monkeypatch.setattr(api, "evaluate_merge", fake_evaluate_merge)
    a, b = parents
    head = commit(repo, {"recipes/scored.yml": RECIPE.format(a=a, b=b)})
    code, log, summary, outputs = run(
        repo, "push", {"before": ZERO, "after": head}, capsys, hf_token="tok-alice", eval_tasks="mergehub_facts"
    )
    assert code == 0 and seen["tasks"] == ["mergehub_facts"]
    from huggingface_hub import ModelCard

    assert "## Evaluation" in ModelCard.load("alice/scored").text


# -- hardening: workflow commands, every recipe on push, foreign repos, pull-request rules, file names ---------


def effective_commands(log: str) -> list[str]:
    """The lines the runner would take for workflow commands: those outside `::stop-commands::T` ... `::T::`."""
    found, token = [], None
    for line in log.splitlines():
        text = line.strip()
        if token is not None:
            token = None if text == f"::{token}::" else token
        elif text.startswith("::stop-commands::"):
            token = text.removeprefix("::stop-commands::")
        elif text.startswith("::"):
            found.append(text)
    return found


def test_workflow_commands_quoted_from_a_recipe_are_never_executed(repo, capsys):
    evil = "merge_method: linear\nmodels:\n  - model: org/a\n::warning file=x.yml::pwned\n::add-mask::pwned\n"
    bad_ref = "merge_method: linear\nmodels:\n  - model: '::error::pwned-too'\n  - model: org/b\n"
    base = commit(repo, {"README.md": "x"})
    head = commit(repo, {"recipes/evil.yml": evil, "recipes/bad-ref.yml": bad_ref})
    event = {"pull_request": {"base": {"sha": base}, "head": {"sha": head}}}
    code, log, summary, _ = run(repo, "pull_request", event, capsys)
    assert code == 1
    assert "::warning file=x.yml::pwned" in log and "::add-mask::pwned" in log  # quoted, on lines of their own
    commands = effective_commands(log)
    assert not [c for c in commands if "pwned" in c.split("::")[1]]  # no command named or located by the recipe
    assert {c.split("::")[1].split(" ")[0] for c in commands} <= {"error", "warning", "group", "endgroup"}
    errors = [c for c in commands if c.startswith("::error")]
    assert len(errors) == 2 and all(c.startswith("::error file=recipes/") for c in errors)
    assert all("%0A" in c or "pwned" not in c for c in errors)  # the quoted lines stay inside the message
    assert log.rstrip().splitlines()[-1].startswith("::mergehub-")  # commands are back on for later steps
    assert "<" not in summary.replace("<your user>", "")


def test_push_checks_every_recipe_so_a_cancelled_run_or_a_revert_leaves_nothing_stale(hub, parents, repo, capsys):
    a, b = parents
    one, two = RECIPE.format(a=a, b=b), RECIPE.format(a=b, b=a)
    first = commit(repo, {"recipes/one.yml": one, "recipes/two.yml": two})
    code, log, _, outputs = run(repo, "push", {"before": ZERO, "after": first}, capsys, hf_token="tok-alice")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/one", "alice/two"], log
    # Push B (edits one.yml) is cancelled while pending; push C edits two.yml only: both are merged, C's first.
    second = commit(repo, {"recipes/one.yml": one.replace("0.6", "0.7")})
    third = commit(repo, {"recipes/two.yml": two.replace("0.6", "0.8")})
    code, log, summary, outputs = run(repo, "push", {"before": second, "after": third}, capsys, hf_token="tok-alice")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/two", "alice/one"], log
    assert "| `recipes/two.yml` |" in summary and "changed in this push; the recipe changed" in summary
    assert "`recipes/one.yml` | [alice/one](" in summary and summary.count("changed in this push") == 1
    # A force push back to the first commit: one.yml and two.yml differ from what the Hub holds, so both go back.
    _git(repo, "checkout", "-q", first)
    code, log, summary, outputs = run(repo, "push", {"before": third, "after": first}, capsys, hf_token="tok-alice")
    assert code == 0 and sorted(json.loads(outputs["pushed-repos"])) == ["alice/one", "alice/two"], log
    # Comments, key order and quoting are not changes: both are up to date, and the summary says why.
    reordered = "# weights tuned by hand\n" + one.replace("merge_method: linear\n", "") + 'merge_method: "linear"\n'
    fourth = commit(repo, {"recipes/one.yml": reordered})
    code, log, summary, outputs = run(repo, "push", {"before": first, "after": fourth}, capsys, hf_token="tok-alice")
    assert code == 0 and outputs["pushed-repos"] == "[]", log
    assert summary.count(UP_TO_DATE) == 2


def test_rerun_remerges_but_only_overwrite_foreign_pushes_into_a_repo_mergehub_did_not_make(
    hub, parents, family, repo, capsys
):
    a, b = parents
    hub.add_repo("alice/theirs", family[2])  # an unrelated model of alice's, named like the recipe
    head = commit(repo, {"recipes/theirs.yml": RECIPE.format(a=a, b=b)})
    for flags in ({}, {"rerun": "true"}):
        code, log, summary, outputs = run(
            repo, "workflow_dispatch", {"after": head}, capsys, hf_token="tok-alice", **flags
        )
        assert code == 1 and outputs["pushed-repos"] == "[]"
        assert "alice/theirs already exists and was not made by mergehub" in log and "overwrite-foreign: true" in log
    code, log, _, outputs = run(
        repo, "workflow_dispatch", {"after": head}, capsys, hf_token="tok-alice", overwrite_foreign="true"
    )
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/theirs"], log
    assert "the repo was not made by mergehub" in log


def test_pull_requests_get_the_space_rules_and_pull_request_target_is_refused(hub, parents, repo, capsys):
    a, b = parents
    many = "merge_method: linear\nmodels:\n" + "".join(f"  - model: org/m{i}\n" for i in range(9))
    (repo / "models" / "local").mkdir(parents=True)
    base = commit(repo, {"README.md": "x"})
    head = commit(
        repo,
        {
            "recipes/local.yml": RECIPE.format(a=a, b="models/local"),
            "recipes/shadow.yml": RECIPE.format(a=a, b="models/local"),
            "recipes/many.yml": many,
            "recipes/ok.yml": RECIPE.format(a=a, b=b),
        },
    )
    event = {"pull_request": {"base": {"sha": base}, "head": {"sha": head}}}
    code, log, summary, _ = run(repo, "pull_request", event, capsys)
    assert (
        code == 1 and summary.count("❌ failed") == 3 and "`recipes/ok.yml` | <your user>/ok | ✔️ validated" in summary
    )
    assert re.search(
        r"::error file=recipes/local.yml,line=7::Model 'models/local' is not allowed here.*allow-local-models", log
    )
    assert "names 9 models; at most 8 are allowed in pull requests" in log

    code, log, summary, _ = run(repo, "pull_request_target", event, capsys)
    assert code == 2 and "::error::This workflow runs on `pull_request_target`" in log and "No recipe" not in summary
    code, log, summary, _ = run(repo, "pull_request_target", event, capsys, allow_pull_request_target="true")
    assert code == 1 and summary.count("✔️ validated") == 1


def test_recipe_names_with_accents_spaces_and_renames_are_found(repo):
    patterns = ("recipes/**/*.yml",)
    first = commit(repo, {"recipes/plain.yml": "a", "recipes/old name.yml": "b"})
    second = commit(
        repo,
        {"recipes/café.yml": "c", "recipes/日本/merge.yml": "d"},
        moves={"recipes/old name.yml": "recipes/new näme.yml"},
    )
    log: list[str] = []
    assert changed_recipes(repo, first, second, patterns, log.append) == [
        "recipes/café.yml",
        "recipes/new näme.yml",
        "recipes/日本/merge.yml",
    ]
    assert any("recipes/old name.yml was renamed to recipes/new näme.yml" in line for line in log)


def test_up_to_date_needs_the_same_mergehub_minor_version():
    recipe, parents = "merge_method: linear\n", {"org/a": "a" * 40}
    published = Published(recipe_sha256(recipe), parents, recipe_fingerprint(recipe), "0.1.0")
    assert merge_reason(published, "# a comment\nmerge_method: 'linear'\n", parents, version="0.1.7") is None
    assert merge_reason(published, recipe, parents, version="0.2.0") == "made by mergehub 0.1.0, this is 0.2.0"
    assert merge_reason(Published(None, ours=False), recipe, parents) == "the repo was not made by mergehub"


MOE = """\
# Two experts on bob/base, random routers.
base_model: {a}
gate_mode: random
experts_per_token: 2
experts:
  - source_model: {a}
  - source_model: {b}
"""
CHAIN = """\
name: pair
merge_method: slerp
base_model: {a}
models:
  - model: {a}
  - model: {b}
parameters:
  t: 0.3
---
merge_method: linear
models:
  - model: {pair}
    parameters:
      weight: 0.5
  - model: {b}
    parameters:
      weight: 0.5
"""


def test_moe_configs_and_multi_stage_recipes_merge_like_recipes(hub, parents, repo, capsys):
    a, b = parents
    head = commit(
        repo, {"recipes/moe.yml": MOE.format(a=a, b=b), "recipes/chain.yml": CHAIN.format(a=a, b=b, pair="pair")}
    )
    code, log, summary, outputs = run(repo, "push", {"before": ZERO, "after": head}, capsys, hf_token="tok-alice")
    assert code == 0, log
    assert json.loads(outputs["pushed-repos"]) == ["alice/chain", "alice/moe"]
    assert "mergekit_moe_config.yml" in HfApi().list_repo_files("alice/moe")

    # Up to date: the parents recorded are every stage's models (not the stage `pair`), the MoE's base and experts.
    code, log, summary, outputs = run(repo, "workflow_dispatch", {}, capsys, hf_token="tok-alice")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == [] and summary.count("⏭️ skipped") == 2, log

    # A parent of the first stage only moves: the whole chain reruns, and the MoE too.
    hub.commit_files(b, {"README.md": b"---\nlicense: mit\n---\nA new revision."})
    code, log, _, outputs = run(repo, "schedule", {}, capsys, hf_token="tok-alice", rerun_if_parents_changed="true")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/chain", "alice/moe"], log
    assert f"parents moved: {b}" in log


def test_pull_request_validates_moe_and_stages_with_their_lines(hub, parents, repo, capsys):
    a, b = parents
    base = commit(repo, {})
    head = commit(
        repo,
        {
            "recipes/moe.yml": MOE.format(a=a, b=b),
            "recipes/chain.yml": CHAIN.format(a=a, b=b, pair="pair"),
            "recipes/bad-chain.yml": CHAIN.format(a=a, b=b, pair="piar"),
            "recipes/bad-moe.yml": MOE.format(a=a, b=b).replace("random", "hidden"),
        },
    )
    event = {"pull_request": {"base": {"sha": base}, "head": {"sha": head}}}
    code, log, summary, _ = run(repo, "pull_request", event, capsys)
    assert code == 1 and summary.count("✔️ validated") == 2 and summary.count("❌ failed") == 2, log
    assert "recipes/moe.yml: MoE of 2 expert(s) on bob/base" in log
    assert "recipes/chain.yml: 2-stage merge, the last linear of 2 model(s)" in log
    assert re.search(r"::error file=recipes/bad-chain.yml,line=12::.*piar", log)
    assert re.search(r"::error file=recipes/bad-moe.yml,line=\d+::.*prompt", log)
    assert not HfApi().repo_exists("alice/moe")


def test_pushed_stages_that_are_up_to_date_are_read_not_rerun(hub, parents, repo, capsys):
    a, b = parents
    text = "# mergehub: push-stage pair=the-pair\n" + CHAIN.format(a=a, b=b, pair="pair")
    head = commit(repo, {"recipes/chain.yml": text})
    code, log, _, outputs = run(repo, "push", {"before": ZERO, "after": head}, capsys, hf_token="tok-alice")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/chain"], log
    assert "Pushed stage pair to alice/the-pair" in log
    pair_commits = len(HfApi().list_repo_commits("alice/the-pair"))

    # Only the final stage changes: `pair` is read from alice/the-pair, not merged again.
    edited = commit(
        repo, {"recipes/chain.yml": text.replace("weight: 0.5\n  - model: bob", "weight: 0.6\n  - model: bob")}
    )
    code, log, _, outputs = run(repo, "push", {"before": head, "after": edited}, capsys, hf_token="tok-alice")
    assert code == 0 and json.loads(outputs["pushed-repos"]) == ["alice/chain"], log
    assert "stage pair: up to date on alice/the-pair, read from there." in log and "Pushed stage" not in log
    assert len(HfApi().list_repo_commits("alice/the-pair")) == pair_commits

    # A parent of `pair` moves: the stage runs again and is pushed again, then the final stage.
    hub.commit_files(a, {"README.md": b"---\nlicense: mit\n---\nA new revision."})
    code, log, _, outputs = run(repo, "schedule", {}, capsys, hf_token="tok-alice", rerun_if_parents_changed="true")
    assert code == 0 and "Pushed stage pair to alice/the-pair" in log, log
    assert len(HfApi().list_repo_commits("alice/the-pair")) == pair_commits + 1
