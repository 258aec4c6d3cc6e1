"""The GitHub Action: a push that adds or changes a recipe merges it and pushes the result to the Hub.

What each event does (`$GITHUB_EVENT_NAME`, payload at `$GITHUB_EVENT_PATH`):

- `push`: every recipe is checked, and merged with `push_merge` unless its repo is up to date, so a
  cancelled run or a force push that reverts a recipe cannot leave one stale. The recipes added,
  modified or renamed between the payload's `before` and `after` (`git diff -z --name-status -M`;
  the merge-base after a force push) come first and are marked in the summary; deletions are logged.
- `pull_request`: the changed recipes are checked with the Space's rules for untrusted recipes
  (`interfaces.untrusted`: Hub models only unless `allow-local-models`, size, model and slice caps),
  then dry-run (`plan_merge`) without a token when there is none (fork pull requests); each problem
  becomes an `::error file=...,line=...::` annotation. `pull_request_target` runs with the repository's
  secrets and is refused unless `allow-pull-request-target` is set.
- `schedule`: with `rerun-if-parents-changed`, every recipe is checked and those whose parents moved
  (or that were never merged) are merged; without it, nothing happens.
- `workflow_dispatch` (and any other event): every recipe is checked, and merged unless up to date.

A recipe file may instead ask for a LoRA extraction: a top-level `extract_lora: {base, model, rank, ...}`
(the options of `mergehub extract-lora`, see `mergehub.extraction`). It is checked, skipped when up to date,
and pushed like a merge recipe, its adapter's parents being the base and the fine-tune.

A recipe is skipped when its repo already holds the same recipe (compared parsed: comments, key order and
quoting do not count), merged from the same commits of every model it names (tokenizer sources included) by
the same mergehub major.minor version; so reruns cost a few small downloads. `rerun` merges anyway;
`overwrite-foreign` lets a merge push into an existing repo that mergehub did not make (the CLI's
`--force`). The target repo is the recipe's file stem
in `namespace` (default: the token's user), unless a comment line `# mergehub: repo=org/name` (or
`repo=name`) says otherwise; two recipes that would push to one repo both fail. mergekit's own
`name:` key is left alone: mergekit uses it to name the stages of multi-stage recipes.

A recipe file may also be a mergekit-moe config (an MoE assembly; its parents are the base and the
experts) or a multi-stage recipe (mergekit-multi's documents; its parents are every stage's models,
so a change to any stage, or to any stage's parent, reruns the whole chain). Neither can be
dispatched to the Space, which runs single recipes. A multi-stage recipe's comment lines
`# mergehub: push-stage NAME=REPO` push intermediate stages to their own repos; a pushed stage that is up
to date there (same stage recipe, same parent commits, its input stages up to date too) is read from its
repo rather than merged again, so only the stages downstream of a change run.

The run ends with a Markdown table in `$GITHUB_STEP_SUMMARY`, the outputs `pushed-repos` and
`results` (JSON) in `$GITHUB_OUTPUT`, and exit code 1 when any recipe failed. The token is never
printed: every line written is scrubbed of it. The runner's workflow commands are off for the whole run
(`::stop-commands::`, with a random token) and resumed only for the Action's own annotations, so text
quoted from a recipe, a Space's log or a library cannot be taken for a command.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import secrets
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from mergehub import __version__, api, safe_yaml
from mergehub.errors import MergehubError, ModelReferenceError, Problem, PublishError, RecipeError, RecipeWarning
from mergehub.interfaces.cli import BUG_EXIT_CODE
from mergehub.interfaces.secrets import scrub_tokens
from mergehub.interfaces.signals import Terminated, exit_code, stop_on_signals
from mergehub.interfaces.untrusted import check_pull_request_extraction, check_pull_request_recipe, recipe_references
from mergehub.moe.config import MoEConfig
from mergehub.publish.card_data import card_scores, mergehub_record, read_card_data
from mergehub.publish.push import hub_errors, made_by_mergehub
from mergehub.recipe import RECIPE_FILE, Recipe, is_hub_id, recipe_fingerprint, recipe_sha256, repo_name
from mergehub.sources.hub import HTTPError
from mergehub.stages import MultiStage, in_stage
from mergehub.units import format_size

__all__ = [
    "DEFAULT_RECIPES",
    "Inputs",
    "Outcome",
    "Published",
    "Selection",
    "UP_TO_DATE",
    "all_recipes",
    "annotation",
    "changed_recipes",
    "current_parents",
    "dispatch_to_space",
    "fetch_published",
    "main",
    "match_recipes",
    "merge_reason",
    "parse_published",
    "error_lines",
    "group",
    "read_inputs",
    "select_recipes",
    "target_repo",
]

DEFAULT_RECIPES = ("recipes/**/*.yml", "recipes/**/*.yaml")
SPACE_ENDPOINTS = ("/merge", "/on_merge")  # mergehub's Space: a pinned name first, then gradio's default
_ZERO = re.compile(r"^0*$")
_REPO_COMMENT = re.compile(r"^\s*#\s*mergehub:\s*repo\s*=\s*(\S+)\s*$", re.MULTILINE)
_STAGE_COMMENT = re.compile(r"^\s*#\s*mergehub:\s*push-stage\s+([^\s=]+)\s*=\s*(\S+)\s*$", re.MULTILINE)
_COMMIT_LINK = re.compile(r"\]\(https?://[^/\s)]+/(?P<ref>[^\s)]+?)/commit/(?P<sha>[0-9a-f]{40})\)")

Status = Literal["merged", "skipped", "failed", "validated"]


# -- inputs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """The action's inputs and the GitHub context it runs in."""

    token: str | None = None
    namespace: str | None = None
    private: bool = False
    recipes: tuple[str, ...] = DEFAULT_RECIPES
    eval_tasks: tuple[str, ...] = ()
    rerun: bool = False
    overwrite_foreign: bool = False
    rerun_if_parents_changed: bool = False
    dispatch_to_space: str | None = None
    strict: bool = False
    allow_local_models: bool = False
    allow_pull_request_target: bool = False
    workspace: Path = Path(".")
    event_name: str = "workflow_dispatch"
    event_path: Path | None = None
    summary_path: Path | None = None
    output_path: Path | None = None


def _input(env: Mapping[str, str], name: str) -> str:
    """An input as GitHub passes it (`INPUT_HF-TOKEN`) or as action.yml sets it (`INPUT_HF_TOKEN`)."""
    for key in (f"INPUT_{name.upper()}", f"INPUT_{name.upper().replace('-', '_')}"):
        if env.get(key, "").strip():
            return env[key].strip()
    return ""


def _bool(env: Mapping[str, str], name: str) -> bool:
    text = _input(env, name).lower()
    if text in ("", "false", "no", "0", "off"):
        return False
    if text in ("true", "yes", "1", "on"):
        return True
    raise MergehubError(f"Input `{name}` is {text!r}, not a boolean.", hint="Use `true` or `false`.")


def _list(text: str) -> tuple[str, ...]:
    return tuple(item for item in re.split(r"[\s,]+", text) if item)


def _path(env: Mapping[str, str], name: str) -> Path | None:
    return Path(env[name]) if env.get(name) else None


def read_inputs(env: Mapping[str, str]) -> Inputs:
    """The inputs from `INPUT_*` variables and the context from `GITHUB_*` variables.

    Raises:
        MergehubError: a boolean input is neither true nor false, or the retired `force` is set.
    """
    if _bool(env, "force"):
        raise MergehubError(
            "Input `force` was split in two.",
            hint="Use `rerun: true` to merge up-to-date recipes again, and `overwrite-foreign: true` to push into "
            "existing repos that mergehub did not make.",
        )
    return Inputs(
        token=_input(env, "hf-token") or None,
        namespace=_input(env, "namespace").strip("/") or None,
        private=_bool(env, "private"),
        recipes=_list(_input(env, "recipes")) or DEFAULT_RECIPES,
        eval_tasks=_list(_input(env, "eval-tasks")),
        rerun=_bool(env, "rerun"),
        overwrite_foreign=_bool(env, "overwrite-foreign"),
        rerun_if_parents_changed=_bool(env, "rerun-if-parents-changed"),
        dispatch_to_space=_input(env, "dispatch-to-space") or None,
        strict=_bool(env, "strict"),
        allow_local_models=_bool(env, "allow-local-models"),
        allow_pull_request_target=_bool(env, "allow-pull-request-target"),
        workspace=Path(env.get("GITHUB_WORKSPACE") or "."),
        event_name=env.get("GITHUB_EVENT_NAME") or "workflow_dispatch",
        event_path=_path(env, "GITHUB_EVENT_PATH"),
        summary_path=_path(env, "GITHUB_STEP_SUMMARY"),
        output_path=_path(env, "GITHUB_OUTPUT"),
    )


# -- which recipes -----------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex over `/`-separated paths: `**/` spans directories, `*` and `?` stay within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def match_recipes(paths: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The paths (relative, `/`-separated) that match any of the glob patterns, in their order."""
    regexes = [_glob_regex(p.removeprefix("./")) for p in patterns]
    return [p for p in paths if any(r.match(p) for r in regexes)]


def _git(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-c", f"safe.directory={workspace.resolve()}", "-C", str(workspace), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def all_recipes(workspace: Path, patterns: Sequence[str]) -> list[str]:
    """Every recipe file of the checkout (the files git tracks; every file outside a git repo), sorted."""
    listed = _git(workspace, "ls-files", "-z")
    if listed.returncode == 0:
        files = [p for p in listed.stdout.split("\0") if p and (workspace / p).is_file()]
    else:
        files = [p.relative_to(workspace).as_posix() for p in workspace.rglob("*") if p.is_file()]
    return match_recipes(sorted(files), patterns)


def _has_commit(workspace: Path, sha: str) -> bool:
    return _git(workspace, "cat-file", "-e", f"{sha}^{{commit}}").returncode == 0


def _parse_name_status(text: str) -> Iterable[tuple[str, str, str | None]]:
    """(status letter, path, old path of a rename or copy) for each entry of `git diff -z --name-status`.

    With `-z` each field ends with a NUL and paths come as they are (no quoting of non-ASCII, tabs or
    newlines): a status, then one path, or two (old, new) for a rename or copy.
    """
    fields = text.split("\0")
    i = 0
    while i < len(fields) and fields[i]:
        status = fields[i][:1]
        if status in ("R", "C") and i + 2 < len(fields):
            yield status, fields[i + 2], fields[i + 1]
            i += 3
        elif i + 1 < len(fields):
            yield status, fields[i + 1], None
            i += 2
        else:
            break


def changed_recipes(
    workspace: Path, before: str | None, after: str, patterns: Sequence[str], log: Callable[[str], None] = print
) -> list[str]:
    """The recipes added, modified or renamed (at their new path) from `before` to `after`.

    All recipes when `before` is all zeros (a new branch) or absent from the clone (a shallow
    checkout); a `before` that is not an ancestor of `after` (a force push) is replaced by their
    merge-base. Deleted recipes are logged and left out.
    """
    if not before or _ZERO.match(before):
        log("New branch: every recipe counts as changed.")
        return all_recipes(workspace, patterns)
    if not _has_commit(workspace, before):
        log(f"Commit {before[:10]} is not in the clone (use `fetch-depth: 0`): every recipe counts as changed.")
        return all_recipes(workspace, patterns)
    base = before
    if _git(workspace, "merge-base", "--is-ancestor", before, after).returncode != 0:
        merge_base = _git(workspace, "merge-base", before, after)
        if merge_base.returncode != 0 or not merge_base.stdout.strip():
            log(f"{before[:10]} and {after[:10]} share no history: every recipe counts as changed.")
            return all_recipes(workspace, patterns)
        base = merge_base.stdout.strip()
        log(
            f"{before[:10]} is not an ancestor of {after[:10]} (a force push, or a base that moved on): "
            f"comparing with their merge-base {base[:10]}."
        )
    diff = _git(workspace, "diff", "-z", "--name-status", "-M", base, after)
    if diff.returncode != 0:
        log(f"`git diff` failed ({diff.stderr.strip()}): every recipe counts as changed.")
        return all_recipes(workspace, patterns)
    changed: list[str] = []
    for status, path, old in _parse_name_status(diff.stdout):
        if status == "D":
            if match_recipes([path], patterns):
                log(f"{path} was deleted: its Hub repo is left as it is.")
            continue
        if match_recipes([path], patterns):
            if status == "R" and old:
                log(f"{old} was renamed to {path}: merged as a changed recipe.")
            changed.append(path)
        elif status == "R" and old and match_recipes([old], patterns):
            log(f"{old} was moved out of the recipe paths ({path}): ignored.")
    return list(dict.fromkeys(changed))


def _event(inputs: Inputs) -> dict[str, Any]:
    if inputs.event_path is None or not inputs.event_path.is_file():
        return {}
    try:
        data = json.loads(inputs.event_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MergehubError(
            f"Cannot read the event payload {inputs.event_path}: {e}.", hint="Run inside GitHub Actions."
        ) from e
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Selection:
    """What to do for the event ("merge", "validate" or "none"), on which recipes in order, and which of them
    the push or pull request changed."""

    mode: Literal["merge", "validate", "none"]
    recipes: list[str]
    changed: frozenset[str] = frozenset()


def select_recipes(inputs: Inputs, event: Mapping[str, Any], log: Callable[[str], None]) -> Selection:
    """What to do for the event, and on which recipes.

    A push considers every recipe, those it changed first: the up-to-date check skips the others, so a
    recipe whose run was cancelled, or that a force push reverted, is merged by the next push.

    Raises:
        MergehubError: a `pull_request_target` event without `allow-pull-request-target`.
    """
    name = inputs.event_name
    if name == "push":
        if event.get("deleted"):
            log("The branch was deleted: nothing to merge.")
            return Selection("none", [])
        after = event.get("after") or "HEAD"
        changed = changed_recipes(inputs.workspace, event.get("before"), after, inputs.recipes, log)
        rest = [p for p in all_recipes(inputs.workspace, inputs.recipes) if p not in changed]
        if rest:
            log(f"{len(changed)} recipe(s) changed by the push come first; the other {len(rest)} are checked too.")
        return Selection("merge", changed + rest, frozenset(changed))
    if name == "pull_request_target" and not inputs.allow_pull_request_target:
        raise MergehubError(
            "This workflow runs on `pull_request_target`: it checks out code from the pull request while "
            "holding the repository's secrets and a write token, so mergehub refuses to run.",
            hint="Use `on: pull_request` (fork pull requests are checked without secrets); if every pull request "
            "comes from people you trust, set `allow-pull-request-target: true`.",
        )
    if name in ("pull_request", "pull_request_target"):
        pr = event.get("pull_request") or {}
        base, head = (pr.get("base") or {}).get("sha"), (pr.get("head") or {}).get("sha")
        if base and head and _has_commit(inputs.workspace, head):
            changed = changed_recipes(inputs.workspace, base, head, inputs.recipes, log)
            return Selection("validate", changed, frozenset(changed))
        log("The pull request's commits are not in the clone (use `fetch-depth: 0`): checking every recipe.")
        return Selection("validate", all_recipes(inputs.workspace, inputs.recipes))
    if name == "schedule":
        if not inputs.rerun_if_parents_changed:
            log("Scheduled run without `rerun-if-parents-changed: true`: nothing to do.")
            return Selection("none", [])
        return Selection("merge", all_recipes(inputs.workspace, inputs.recipes))
    if name != "workflow_dispatch":
        log(f"Event {name!r}: treated like workflow_dispatch (every recipe; up-to-date ones are skipped).")
    return Selection("merge", all_recipes(inputs.workspace, inputs.recipes))


# -- where each recipe goes, and whether it is up to date --------------------------------------------


def target_repo(path: str, text: str, namespace: Callable[[], str]) -> str:
    """The repo a recipe is pushed to: its `# mergehub: repo=...` comment, else its file stem, in `namespace`.

    Raises:
        RecipeError: the name given by the comment is not a valid repo ID.
    """
    comment = _REPO_COMMENT.search(text)
    value = comment[1] if comment else repo_name(PurePosixPath(path).stem)
    if not is_hub_id(value):
        raise RecipeError(
            f"{value!r} is not a valid Hub repo name.",
            hint="Add a line `# mergehub: repo=org/name` to the recipe (letters, digits, `-`, `_`, `.`).",
            line=text.count("\n", 0, comment.start(1)) + 1 if comment else None,
        )
    return value if "/" in value else f"{namespace()}/{value}"


def stage_repos(text: str, namespace: Callable[[], str]) -> dict[str, str]:
    """The intermediate stages a multi-stage recipe pushes: its `# mergehub: push-stage NAME=REPO` comments.

    Raises:
        RecipeError: a repo is not a valid repo ID (at its line).
    """
    repos = {}
    for comment in _STAGE_COMMENT.finditer(text):
        name, value = comment[1], comment[2]
        if not is_hub_id(value):
            raise RecipeError(
                f"{value!r} is not a valid Hub repo name for stage `{name}`.",
                hint="Write `# mergehub: push-stage NAME=org/name` (letters, digits, `-`, `_`, `.`).",
                line=text.count("\n", 0, comment.start(2)) + 1,
            )
        repos[name] = value if "/" in value else f"{namespace()}/{value}"
    return repos


@dataclass(frozen=True)
class Published:
    """What a pushed merge records: its recipe's hash (of the text, and of the parsed recipe when the repo
    holds it), each Hub parent's commit, the mergehub version that made it, whether mergehub made it, and the
    commit it is at."""

    recipe_sha256: str | None
    parents: dict[str, str] = field(default_factory=dict)
    recipe_fingerprint: str | None = None
    version: str | None = None
    ours: bool = True
    commit: str | None = None


def _fingerprint(text: str | None) -> str | None:
    try:
        return recipe_fingerprint(text) if text is not None else None
    except MergehubError:
        return None


def parse_published(card: str | None, recipe_text: str | None, *, ours: bool = True) -> Published | None:
    """A pushed merge's record, from its README.md and mergekit_config.yml; None when there is neither.

    The card's `mergehub:` metadata block (`recipe_sha256`, `parents: {id: sha}`, `version`) is used when
    present; else the hash of mergekit_config.yml and the commit links of the card's Parents table.
    """
    if card is None and recipe_text is None:
        return None
    record = mergehub_record(read_card_data(card))
    fingerprint = _fingerprint(recipe_text)
    if isinstance(record.get("recipe_sha256"), str):
        parents = record.get("parents") if isinstance(record.get("parents"), dict) else {}
        version = record.get("version") if isinstance(record.get("version"), str) else None
        found = {str(k): str(v) for k, v in parents.items() if v}
        return Published(record["recipe_sha256"], found, fingerprint, version, ours)
    parents: dict[str, str] = {}
    for match in _COMMIT_LINK.finditer(card or ""):
        parents.setdefault(match["ref"], match["sha"])
    return Published(recipe_sha256(recipe_text) if recipe_text is not None else None, parents, fingerprint, None, ours)


def fetch_published(repo_id: str, token: str | None) -> Published | None:
    """The record of the merge at `repo_id` on the Hub; None when the repo does not exist.

    Raises:
        PublishError: the Hub cannot be reached, or refuses the token.
    """
    hub = HfApi(token=token)
    with hub_errors(f"Reading {repo_id}"):
        try:
            info = hub.model_info(repo_id)
        except RepositoryNotFoundError:
            return None
        sha = info.sha

        def read(filename: str) -> str | None:
            try:
                return Path(hub.hf_hub_download(repo_id, filename, revision=sha)).read_text(encoding="utf-8")
            except (EntryNotFoundError, RevisionNotFoundError):
                return None

        ours = made_by_mergehub(info)
        published = parse_published(read("README.md"), read(RECIPE_FILE), ours=ours)
        if published is None:
            return None if ours else Published(None, ours=False, commit=sha)
        return replace(published, commit=sha)


def current_parents(
    recipe: Recipe | MoEConfig | MultiStage | api.ExtractionSpec, token: str | None, *, stages: Sequence[str] = ()
) -> dict[str, str]:
    """The current commit (at the recipe's revision, else main) of each Hub model the recipe names, tokenizer
    sources and LoRA adapters (`model+adapter`) included; local parents are left out. An extraction's parents are
    its base and its fine-tune.

    For an MoE config the parents are the base and every expert; for a multi-stage recipe, every stage's models
    but not the earlier stages' outputs (`stages`: their names), so a change to any stage's parent reruns the chain.

    Raises:
        ModelReferenceError: a parent, or its revision, is not on the Hub (or the token cannot read it).
        PublishError: the Hub cannot be reached.
    """
    if isinstance(recipe, MultiStage):
        parents: dict[str, str] = {}
        for stage in recipe.stages:
            try:
                found = current_parents(stage.recipe, token, stages=recipe.names)
            except MergehubError as e:
                raise in_stage(e, stage.name, stage.first_line) from e
            parents.update((ref, sha) for ref, sha in found.items() if ref not in parents)
        return parents
    hub = HfApi(token=token)
    parents: dict[str, str] = {}
    refs = [recipe.base, recipe.model] if isinstance(recipe, api.ExtractionSpec) else recipe_references(recipe)
    for ref in [part for full in refs for part in (full.model, full.adapter) if part]:
        if ref.is_local or not ref.looks_like_hub_id or ref.path in parents or ref.path in stages:
            continue
        try:
            with hub_errors(f"Reading {ref}"):
                try:
                    parents[ref.path] = hub.model_info(ref.path, revision=ref.revision).sha or ""
                except (RepositoryNotFoundError, RevisionNotFoundError) as e:
                    raise ModelReferenceError(
                        f"Model '{ref}' was not found on the Hub.",
                        hint="Check the model ID and revision; a private or gated model needs an `hf-token` "
                        "that can read it.",
                    ) from e
        except MergehubError as e:
            if isinstance(recipe, Recipe):
                recipe.locate(e, recipe.location_of(ref))
            raise
    return parents


def _extraction(text: str) -> api.ExtractionSpec | None:
    """The extraction a file asks for (a top-level `extract_lora:`), or None for a merge recipe."""
    try:
        data = safe_yaml.load(text)
    except yaml.YAMLError:
        return None
    return api.parse_extraction(text) if api.is_extraction(data) else None


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


UP_TO_DATE = "up to date: same recipe, same parent commits, same mergehub version"


def merge_reason(
    published: Published | None, recipe_text: str, parents: Mapping[str, str], version: str = __version__
) -> str | None:
    """Why the recipe must be merged again, or None when the pushed merge is up to date.

    The recipe is compared parsed when the repo holds its text (comments, key order and quoting do not
    count), else by the hash of its text; the parents by commit; mergehub by major.minor version.
    """
    if published is None:
        return "not merged yet"
    if not published.ours:
        return "the repo was not made by mergehub"
    if published.recipe_fingerprint is not None:
        if published.recipe_fingerprint != _fingerprint(recipe_text):
            return "the recipe changed"
    elif published.recipe_sha256 != recipe_sha256(recipe_text):
        return "the recipe changed" if published.recipe_sha256 else "the repo has no mergehub record"
    if published.version and _major_minor(published.version) != _major_minor(version):
        return f"made by mergehub {published.version}, this is {version}"
    recorded = published.parents
    if recorded == dict(parents):
        return None
    moved = [
        f"{ref} {recorded.get(ref, 'none')[:7]} → {sha[:7]}" for ref, sha in parents.items() if recorded.get(ref) != sha
    ]
    moved += [f"{ref} no longer a parent" for ref in recorded if ref not in parents]
    return "parents moved: " + ", ".join(moved)


# -- problems as annotations -------------------------------------------------------------------------


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(
    kind: Literal["error", "warning", "notice"], message: str, file: str | None = None, line: int | None = None
) -> str:
    """A GitHub workflow command, e.g. `::error file=recipes/x.yml,line=3::message`, its text escaped."""
    props = ",".join(f"{k}={_escape_property(str(v))}" for k, v in (("file", file), ("line", line)) if v is not None)
    return f"::{kind}{' ' + props if props else ''}::{_escape_data(message)}"


def group(title: str | None) -> str:
    """The workflow command that opens a collapsed group of the log (`title` escaped), or closes it (None)."""
    return "::endgroup::" if title is None else f"::group::{_escape_data(title)}"


def _located(problem: Problem) -> str:
    return f"{problem.location}: {problem.message}" if problem.location else problem.message


def error_lines(error: BaseException) -> list[tuple[int, str]]:
    """(line, message) for each problem of a failed recipe, from the error's fields only (its wording is never parsed).

    Strict-mode warnings and an error's located `problems` each get their line; otherwise the error is
    one problem at its `line` (the first line when it concerns no one place). Hints are not included.
    """
    if not isinstance(error, MergehubError):
        return [(1, f"{type(error).__name__}: {error}. This is a bug in mergehub: please report it with the recipe.")]
    if isinstance(error, RecipeError) and error.warnings:
        return [(w.line or 1, f"strict: {_located(w)}") for w in error.warnings]
    if error.problems:
        head = error.headline.rstrip(":")
        by_line: dict[int, list[str]] = {}
        for problem in error.problems:
            by_line.setdefault(problem.line or error.line or 1, []).append(_located(problem))
        return [(line, f"{head}: {'; '.join(found)}") for line, found in sorted(by_line.items())]
    return [(error.line or 1, error.message)]


# -- running a merge on a Space ----------------------------------------------------------------------


def _gradio_client(space_id: str, token: str) -> Any:
    """A gradio_client `Client` for the Space, allowed to act with the token (`oauth_token`)."""
    try:
        from gradio_client import Client
    except ImportError as e:
        raise PublishError("dispatch-to-space needs gradio_client.", hint="pip install 'gradio_client>=2.7'") from e
    try:
        return Client(space_id, token=token, oauth_token=token, verbose=False, download_files=False)
    except TypeError as e:  # gradio_client < 2.7 cannot pass an OAuth token to the Space
        raise PublishError(
            "This gradio_client cannot sign in to a Space.", hint="pip install 'gradio_client>=2.7'"
        ) from e


def dispatch_to_space(
    space_id: str,
    recipe_text: str,
    repo_id: str,
    *,
    private: bool,
    token: str | None,
    log: Callable[[str], None] = print,
    client_factory: Callable[[str, str], Any] = _gradio_client,
) -> str:
    """Run the merge on a mergehub Space (its Merge button's endpoint), streaming its log; returns its last line.

    Raises:
        PublishError: no token, a Space without mergehub's merge endpoint, or a merge the Space reports failed.
    """
    if not token:
        raise PublishError("dispatch-to-space needs `hf-token`.", hint="The Space pushes as you: pass a write token.")
    client = client_factory(space_id, token)
    named = (client.view_api(return_format="dict", print_info=False) or {}).get("named_endpoints", {})
    endpoint = next((e for e in SPACE_ENDPOINTS if e in named), None)
    if endpoint is None:
        raise PublishError(
            f"The Space {space_id} has no mergehub merge endpoint ({' or '.join(SPACE_ENDPOINTS)}).",
            hint="dispatch-to-space needs a Space running mergehub's app (space/app.py); check the Space ID.",
        )
    job = client.submit(recipe_text, repo_id, private, api_name=endpoint)
    shown = 0
    for output in job:
        lines = str(output[1] or "").splitlines()
        for line in lines[shown:-1]:  # the last line is live progress, rewritten until it is done
            log(f"[{space_id}] {line}")
        shown = max(shown, len(lines) - 1)
    status, text = job.result()[:2]
    lines = str(text or "").splitlines()
    for line in lines[shown:]:
        log(f"[{space_id}] {line}")
    if not str(status).startswith("✅"):
        shown = html.unescape(re.sub(r"\\(.)", r"\1", str(status).replace("&nbsp;", " ")))  # the page escapes its text
        reason = re.sub(r"^\W+", "", shown).replace("  \n", "\n").strip() or "no result"
        raise PublishError(f"The Space {space_id} did not push: {reason}", hint="See the Space's log above.")
    return lines[-1] if lines else str(status)


# -- the run -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to one recipe."""

    recipe: str
    repo_id: str | None
    status: Status
    seconds: float = 0.0
    detail: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    commit_url: str | None = None
    changed: bool = False


class _Console:
    """Prints to the job log with the token scrubbed out, and with the runner's workflow commands off.

    `stop()` turns command processing off (`::stop-commands::TOKEN`, with a random token nothing else can
    know); plain lines (`console(text)`) may then quote anything. `command(line)` prints one of the Action's
    own commands, built with `annotation` or `group`, between `::TOKEN::` (resume) and a new stop.
    """

    def __init__(self, secrets: Iterable[str | None], stream: Any = None) -> None:
        self.secrets = list(secrets)
        self.stream = stream
        self.token = secrets_token()
        self.stopped = False

    def scrub(self, text: str) -> str:
        return scrub_tokens(text, self.secrets)

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def stop(self) -> None:
        """Turn workflow commands off until `resume` (or the end of the step)."""
        if not self.stopped:
            self._print(f"::stop-commands::{self.token}")
            self.stopped = True

    def resume(self) -> None:
        """Turn workflow commands back on."""
        if self.stopped:
            self._print(f"::{self.token}::")
            self.stopped = False

    def __call__(self, text: str) -> None:
        """Print text that may quote a recipe, a log or an error: never taken for a command."""
        self.stop()
        self._print(self.scrub(text))

    def command(self, line: str) -> None:
        """Print one of the Action's own workflow commands (its data and properties already escaped)."""
        was_stopped = self.stopped
        self.resume()
        self._print(self.scrub(line))
        if was_stopped:
            self.stop()


def secrets_token() -> str:
    """A fresh token for `::stop-commands::`, unguessable by whoever wrote the text it guards."""
    return f"mergehub-{secrets.token_hex(16)}"


def _eval_options(tasks: Sequence[str], log: _Console) -> dict[str, Any]:
    """`eval_tasks` for push_merge when lm-eval is installed (the `eval` extra); else a warning."""
    if not tasks:
        return {}
    if importlib.util.find_spec("lm_eval") is None:
        log.command(
            annotation(
                "warning",
                f"eval-tasks ({', '.join(tasks)}) ignored: lm-eval is not installed (pip install 'mergehub[eval]').",
            )
        )
        return {}
    return {"eval_tasks": list(tasks)}


def _card_scores(repo_id: str, revision: str, token: str | None) -> dict[str, float]:
    """The scores in the model-index of a pushed card, for the summary."""
    try:
        readme = Path(HfApi(token=token).hf_hub_download(repo_id, "README.md", revision=revision)).read_bytes()
    except (HTTPError, OSError):
        return {}
    return {f"{r.dataset_name} {r.metric_type}": float(r.metric_value) for r in card_scores(read_card_data(readme))}


class _Runner:
    """Merges or checks one recipe at a time; a failure is recorded, and the next recipe goes on."""

    def __init__(self, inputs: Inputs, log: _Console, space_client: Callable[[str, str], Any] | None) -> None:
        self.inputs = inputs
        self.log = log
        self.space_client = space_client or _gradio_client
        self._user: str | None = None
        self._targets: dict[str, list[str]] | None = None

    def namespace(self) -> str:
        """The `namespace` input, else the token's user."""
        if self.inputs.namespace:
            return self.inputs.namespace
        if self._user is None:
            try:
                self._user = HfApi(token=self.inputs.token).whoami()["name"]
            except Exception as e:  # LocalTokenNotFoundError, a 401, ...
                raise PublishError(
                    f"Cannot tell whose namespace to push to ({type(e).__name__}).",
                    hint="Pass `hf-token` (a write token), or set `namespace`.",
                ) from e
        return self._user

    def target(self, path: str, text: str, namespace: Callable[[], str]) -> str:
        """The recipe's repo, checked against every other recipe of the checkout."""
        repo_id = target_repo(path, text, namespace)
        if self._targets is None:
            self._targets = {}
            for other in all_recipes(self.inputs.workspace, self.inputs.recipes):
                try:
                    repo = target_repo(other, safe_yaml.read_text(self.inputs.workspace / other), namespace)
                except (OSError, UnicodeDecodeError, MergehubError):
                    continue
                self._targets.setdefault(repo, []).append(other)
        if others := [p for p in self._targets.get(repo_id, []) if p != path]:
            raise RecipeError(
                f"{path} and {others[0]} would both push to {repo_id}.",
                hint="Give one of them a line `# mergehub: repo=org/other-name`.",
            )
        return repo_id

    def fail(self, path: str, error: BaseException, started: float, repo_id: str | None) -> Outcome:
        """Annotate each problem at its line, with the error's hint; the outcome lists them without hints."""
        problems = error_lines(error)
        hint = f"\nHint: {error.hint}" if isinstance(error, MergehubError) and error.hint else ""
        for line, message in problems:
            self.log.command(annotation("error", message + hint, file=path, line=line))
        if not isinstance(error, MergehubError):
            _log_traceback(self.log, error)
        detail = self.log.scrub("; ".join(message for _, message in problems))
        return Outcome(path, repo_id, "failed", time.monotonic() - started, detail)

    def validate(self, path: str) -> Outcome:
        """Check a pull request's recipe or extraction file with the rules for untrusted recipes, then dry-run it
        (configs and headers only); no repo is touched."""
        started, text = time.monotonic(), ""
        try:
            text = safe_yaml.read_text(self.inputs.workspace / path)
            repo_id = self.target(path, text, lambda: self.inputs.namespace or "<your user>")
            root, allow_local = self.inputs.workspace, self.inputs.allow_local_models
            if spec := _extraction(text):
                spec = check_pull_request_extraction(text, root, allow_local=allow_local)
                plan = api.plan_extraction(str(spec.base), str(spec.model), spec.options, token=self.inputs.token)
            else:
                document = check_pull_request_recipe(text, root, allow_local=allow_local)
                plan = api.plan_merge(document, token=self.inputs.token, strict=self.inputs.strict)
        except Exception as e:  # noqa: BLE001 - every problem becomes an annotation
            return self.fail(path, e, started, None)
        what = f"LoRA extraction from {len(plan.models)} model(s)" if spec else _describe(plan)
        self.log(f"{path}: {what}, {len(plan.jobs)} tensors: no problems.")
        self.annotate_warnings(path, plan.warnings)
        detail = f"{plan.method}, {len(plan.jobs)} tensors"
        return Outcome(path, repo_id, "validated", time.monotonic() - started, detail)

    def merge(self, path: str) -> Outcome:
        """Merge and push a recipe, unless its repo is up to date (and `rerun` is off)."""
        started, text, repo_id = time.monotonic(), "", None
        try:
            text = safe_yaml.read_text(self.inputs.workspace / path)
            repo_id = self.target(path, text, self.namespace)
            spec = _extraction(text)
            recipe = spec or api.parse_document(text)
            reason = self.rerun_reason(repo_id, text, recipe)
            if reason is None:
                self.log(f"{path} → {repo_id}: {UP_TO_DATE} ({_major_minor(__version__)}); skipped.")
                return Outcome(path, repo_id, "skipped", time.monotonic() - started, UP_TO_DATE)
            if isinstance(recipe, api.ExtractionSpec):
                return self.extract(path, text, recipe, repo_id, reason, started)
            self.log(f"{path} → {repo_id}: merging ({reason}).")
            if self.inputs.dispatch_to_space:
                if not isinstance(recipe, Recipe):
                    raise RecipeError(
                        "The Space runs single merge recipes; this is "
                        + ("a multi-stage recipe." if isinstance(recipe, MultiStage) else "a mergekit-moe config."),
                        hint="Merge it in the Action itself: leave `dispatch-to-space` empty for this workflow.",
                        line=1,
                    )
                if self.inputs.strict:  # the Space merges without strict mode: check here, from configs and headers
                    api.plan_merge(recipe, token=self.inputs.token, strict=True)
                return self._on_space(path, text, repo_id, reason, started)
            options = _eval_options(self.inputs.eval_tasks, self.log)
            evaluated = bool(options)
            if isinstance(recipe, MultiStage):
                options.update(self.stage_options(recipe, text))
            result, pushed = api.push_merge(
                self.inputs.workspace / path,
                repo_id,
                token=self.inputs.token,
                private=self.inputs.private,
                force=self.inputs.overwrite_foreign,
                on_progress=self._progress(),
                strict=self.inputs.strict,
                **options,
            )
        except Exception as e:  # noqa: BLE001 - one recipe's failure does not stop the others
            return self.fail(path, e, started, repo_id)
        self.annotate_warnings(path, result.plan.warnings)
        self.log(result.figures())
        for warning in result.stats.warnings():
            self.log.command(annotation("warning", warning, file=path))
        for name, stage in result.stages_pushed:
            self.log(f"Pushed stage {name} to {stage.repo_id} at {stage.commit_sha[:10]}: {stage.commit_url}")
        self.log(f"Pushed {pushed.repo_id} at {pushed.commit_sha[:10]}: {pushed.commit_url}")
        scores = _card_scores(pushed.repo_id, pushed.commit_sha, self.inputs.token) if evaluated else {}
        return Outcome(path, pushed.repo_id, "merged", time.monotonic() - started, reason, scores, pushed.commit_url)

    def rerun_reason(
        self, repo_id: str, text: str, recipe: Recipe | MoEConfig | MultiStage | api.ExtractionSpec
    ) -> str | None:
        """Why a recipe or extraction file must run (or run again, with `rerun`), None when its repo is up to date.

        Raises:
            PublishError: the repo exists and mergehub did not make it (unless `overwrite-foreign`).
        """
        published = fetch_published(repo_id, self.inputs.token)
        if published is not None and not published.ours and not self.inputs.overwrite_foreign:
            raise PublishError(
                f"{repo_id} already exists and was not made by mergehub: it is left as it is.",
                hint="Name another repo with a line `# mergehub: repo=org/name` in the recipe, or set "
                "`overwrite-foreign: true` to push into it anyway.",
            )
        reason = merge_reason(published, text, current_parents(recipe, self.inputs.token))
        if self.inputs.rerun:
            return f"rerun requested; {reason}" if reason else "rerun requested"
        return reason

    def extract(
        self, path: str, text: str, spec: api.ExtractionSpec, repo_id: str, reason: str, started: float
    ) -> Outcome:
        """Extract and push the LoRA adapter an extraction file asks for (`reason`: why it runs)."""
        if self.inputs.dispatch_to_space or self.inputs.eval_tasks:
            ignored = "dispatch-to-space (extractions run here)" if self.inputs.dispatch_to_space else "eval-tasks"
            self.log.command(annotation("warning", f"{ignored} is ignored for an extraction file.", file=path))
        self.log(f"{path} → {repo_id}: extracting a LoRA adapter ({reason}).")
        result, pushed = api.push_extraction(
            str(spec.base),
            str(spec.model),
            repo_id,
            spec.options,
            token=self.inputs.token,
            private=self.inputs.private,
            force=self.inputs.overwrite_foreign,
            on_progress=self._progress(),
            spec_text=text,
        )
        self.log(result.figures())
        self.log(f"Pushed {pushed.repo_id} at {pushed.commit_sha[:10]}: {pushed.commit_url}")
        return Outcome(path, pushed.repo_id, "merged", time.monotonic() - started, reason, commit_url=pushed.commit_url)

    def stage_options(self, recipe: MultiStage, text: str) -> dict[str, Any]:
        """`push_merge`'s options for the stages the recipe pushes: each is reused from its repo when that holds
        the same stage recipe from the same parent commits, and every stage it reads is reused too; the others
        run and are pushed (all of them with `rerun`)."""
        repos = stage_repos(text, self.namespace)
        reuse: dict[str, str] = {}
        for stage in recipe.stages:
            if self.inputs.rerun or stage.name not in repos or any(need not in reuse for need in stage.needs):
                continue
            published = fetch_published(repos[stage.name], self.inputs.token)
            parents = current_parents(stage.recipe, self.inputs.token, stages=recipe.names)
            if published is not None and published.commit:
                if merge_reason(published, stage.recipe.text, parents) is None:
                    reuse[stage.name] = f"{repos[stage.name]}@{published.commit}"
                    self.log(f"  stage {stage.name}: up to date on {repos[stage.name]}, read from there.")
        push = {name: repo for name, repo in repos.items() if name not in reuse}
        return {"push_stages": push, "push_private": self.inputs.private, "reuse_stages": reuse} if repos else {}

    def annotate_warnings(self, path: str, warnings: Sequence[RecipeWarning]) -> None:
        """One warning annotation per ignored key or parameter, at its line of the recipe."""
        for warning in warnings:
            self.log.command(annotation("warning", _located(warning), file=path, line=warning.line or 1))

    def _on_space(self, path: str, text: str, repo_id: str, reason: str, started: float) -> Outcome:
        space = self.inputs.dispatch_to_space or ""
        if self.inputs.eval_tasks:
            self.log.command(annotation("warning", "eval-tasks are ignored with dispatch-to-space.", file=path))
        last = dispatch_to_space(
            space,
            text,
            repo_id,
            private=self.inputs.private,
            token=self.inputs.token,
            log=self.log,
            client_factory=self.space_client,
        )
        return Outcome(path, repo_id, "merged", time.monotonic() - started, f"{reason}; on {space}: {last}")

    def _progress(self) -> Callable[[Any], None]:
        """A progress callback that logs every tenth of the tensors."""
        step = [0]

        def report(p: Any) -> None:
            tenth = 10 * p.tensors_done // max(p.tensors_total, 1)
            if tenth > step[0]:
                step[0] = tenth
                self.log(
                    f"  {p.tensors_done}/{p.tensors_total} tensors, "
                    f"read {format_size(p.bytes_read)} of {format_size(p.bytes_total)}"
                )

        return report


def _describe(plan: api.Plan) -> str:
    """What a plan merges, for the log: a merge, a multi-stage merge, or an MoE assembly."""
    if plan.moe is not None:
        return f"MoE of {len(plan.moe.experts)} expert(s) on {plan.base_model}"
    if plan.stages:
        return f"{len(plan.stages)}-stage merge, the last {plan.method} of {len(plan.models)} model(s)"
    return f"{plan.method} merge of {len(plan.models)} model(s)"


def _repo_link(repo_id: str | None) -> str:
    if not repo_id or "<" in repo_id:
        return repo_id or "—"
    return f"[{repo_id}]({constants.ENDPOINT.rstrip('/')}/{repo_id})"


def summary_markdown(outcomes: Sequence[Outcome], event_name: str) -> str:
    """The job summary: one row per recipe."""
    icons = {"merged": "✅ merged", "skipped": "⏭️ skipped", "failed": "❌ failed", "validated": "✔️ validated"}
    lines = [f"## mergehub ({event_name})", ""]
    if not outcomes:
        return "\n".join([*lines, "No recipe to merge or check.", ""])
    lines += ["| Recipe | Repo | Status | Time | Scores | Details |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        scores = "; ".join(f"{k}: {v:.4g}" for k, v in o.scores.items()) or "—"
        detail = _cell(("changed in this push; " if o.changed and o.status != "validated" else "") + o.detail)
        lines.append(
            f"| `{_cell(o.recipe).replace('`', '')}` | {_repo_link(o.repo_id)} | {icons[o.status]} | "
            f"{o.seconds:.1f} s | {scores} | {detail} |"
        )
    return "\n".join([*lines, ""])


def _cell(text: str) -> str:
    """Text for one cell of a Markdown table: no pipes or line breaks, no HTML."""
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ").replace("<", "&lt;")


def _write_outputs(path: Path, values: Mapping[str, str]) -> None:
    """Step outputs in the multiline-safe `name<<delimiter` form, each with a fresh delimiter."""
    with path.open("a", encoding="utf-8") as f:
        for name, value in values.items():
            delimiter = f"ghadelimiter_{uuid.uuid4()}"
            f.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")


def main(env: Mapping[str, str] | None = None, *, space_client: Callable[[str, str], Any] | None = None) -> int:
    """Run the action for the current event.

    Args:
        env: The environment (default: `os.environ`): `INPUT_*` inputs and GitHub's `GITHUB_*` variables.
        space_client: Builds the gradio client for dispatch-to-space, `(space_id, token) -> client`.

    Returns:
        0, 1 when any recipe failed, 2 when the inputs or the event cannot be used, 70 on an unexpected
        error (a bug: the log shows its traceback), 130 or 143 when stopped by SIGINT or SIGTERM.
    """
    env = os.environ if env is None else env
    log = _Console([_input(env, "hf-token"), env.get("HF_TOKEN")])
    log.stop()  # from here on, only `log.command` writes workflow commands
    try:
        return _run(env, log, space_client)
    except Exception as e:  # noqa: BLE001 - anything not handled below is a bug: say so, with the traceback
        log.command(
            annotation(
                "error",
                f"{type(e).__name__}: {e}. This is a bug in mergehub: please report it with the traceback below.",
            )
        )
        _log_traceback(log, e)
        return BUG_EXIT_CODE
    finally:
        log.resume()


def _log_traceback(log: _Console, error: BaseException) -> None:
    """The traceback of an unexpected error, scrubbed, in a collapsed group of the job log."""
    log.command(group("Traceback (for the bug report)"))
    log("".join(traceback.format_exception(error)).rstrip())
    log.command(group(None))


def _run(env: Mapping[str, str], log: _Console, space_client: Callable[[str, str], Any] | None) -> int:
    try:
        inputs = read_inputs(env)
        selection = select_recipes(inputs, _event(inputs), log)
    except MergehubError as e:
        log.command(annotation("error", str(e)))
        return 2
    mode, recipes = selection.mode, selection.recipes
    if mode != "none":
        verb = "check" if mode == "validate" else "merge"
        log(f"{inputs.event_name}: {len(recipes)} recipe(s) to {verb}: {', '.join(recipes) or 'none'}.")
    runner = _Runner(inputs, log, space_client)
    outcomes = []
    path = ""
    try:
        with stop_on_signals():  # a cancelled workflow gets SIGINT, then SIGTERM: clean up either way
            for path in recipes:
                log.command(group(path))
                outcome = runner.validate(path) if mode == "validate" else runner.merge(path)
                outcome.changed = path in selection.changed
                outcomes.append(outcome)
                log.command(group(None))
    except KeyboardInterrupt as e:
        log.command(group(None))
        log.command(
            annotation(
                "error",
                f"The run was stopped ({'SIGTERM' if isinstance(e, Terminated) else 'SIGINT'}) during "
                f"{path or 'setup'}; "
                "its partial output and any repo it had just created were removed.",
            )
        )
        return exit_code(e)
    for o in outcomes:
        log(f"{o.status:>9}  {o.recipe}  {o.repo_id or ''}  {o.detail}")
    if inputs.summary_path is not None:
        with inputs.summary_path.open("a", encoding="utf-8") as f:
            f.write(log.scrub(summary_markdown(outcomes, inputs.event_name)))
    if inputs.output_path is not None:
        pushed = [o.repo_id for o in outcomes if o.status == "merged"]
        results = json.dumps([asdict(o) for o in outcomes])
        _write_outputs(inputs.output_path, {"pushed-repos": json.dumps(pushed), "results": log.scrub(results)})
    return 1 if any(o.status == "failed" for o in outcomes) else 0
