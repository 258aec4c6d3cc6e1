"""`mergehub action init`: write a ready GitHub workflow that merges a repository's recipes with the mergehub Action.

The workflow is the one in examples/recipe-factory (a test keeps the two equal); its `uses:` line names the GitHub
repository that publishes mergehub at a release tag or a full commit SHA: the one mergehub was installed from
(`pip install git+https://github.com/OWNER/REPO@REF` records it), or `--uses`.
"""

from __future__ import annotations

import argparse
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from mergehub.errors import MergehubError

__all__ = ["WORKFLOW_PATH", "add_commands", "COMMANDS", "installed_action", "init_workflow", "workflow_yaml"]

WORKFLOW_PATH = Path(".github/workflows/merge.yml")
_USES = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+@[\w.+-]+$")
_GITHUB_URL = re.compile(r"^(?:git\+)?https://github\.com/(?P<repo>[\w.-]+/[\w.-]+?)(?:\.git)?/?$")
_MARK = "@@USES@@"

_TEMPLATE = """\
# A recipe factory: every mergekit recipe committed under recipes/ becomes a model on the Hugging Face Hub.
# Written by `mergehub action init`. Setup: add a repository secret HF_TOKEN (a Hugging Face token with write
# access), and commit a recipe such as recipes/example-slerp.yml.
#
# - push to main: every recipe is checked, those the push changed first. A recipe whose repo already holds the
#   same recipe (comments and key order aside), merged from the same parent commits by the same mergehub
#   major.minor version, is skipped; the others are merged and pushed to <your user>/<file stem>, or to the repo
#   named by a `# mergehub: repo=org/name` line. The job summary says why each recipe was merged or skipped.
# - pull request: the changed recipes are checked without merging, with the mergehub Space's rules (Hub models
#   only, size limits); fork pull requests need no token for public models. Problems show on the recipe's lines.
#   Do not switch to `pull_request_target`: it would run the check holding this repository's secrets.
# - weekly: recipes whose parents got new commits are merged again. GitHub disables scheduled workflows after
#   60 days without activity in the repository; re-enable this one from the Actions tab.
# - "Run workflow" button: every recipe; tick "rerun" to merge the up-to-date ones again.
#
# `uses:` names mergehub's GitHub repository at a release tag or, safer, a full commit SHA (a SHA cannot move).
name: Merge recipes

on:
  push:
    branches: [main]
    paths: ["recipes/**"]
  pull_request:
    paths: ["recipes/**"]
  schedule:
    - cron: "23 5 * * 1" # Mondays 05:23 UTC
  workflow_dispatch:
    inputs:
      rerun:
        description: Merge every recipe again, even those already up to date
        type: boolean
        default: false

permissions:
  contents: read

concurrency:
  group: merge-${{ github.ref }} # one run at a time per branch; the next push checks every recipe anyway
  cancel-in-progress: false

jobs:
  merge:
    runs-on: ubuntu-latest
    timeout-minutes: 360
    steps:
      - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1
        with:
          fetch-depth: 0 # the full history, to see what a push or a pull request changed
          persist-credentials: false

      - id: mergehub
        uses: @@USES@@
        with:
          hf-token: ${{ secrets.HF_TOKEN }}
          private: false
          rerun-if-parents-changed: true
          rerun: ${{ github.event_name == 'workflow_dispatch' && inputs.rerun }}
          # namespace: my-org                  # default: the token's user
          # eval-tasks: mergehub_facts         # score each merge, when the installed mergehub can evaluate
          # dispatch-to-space: me/mergehub     # run the merges on your mergehub Space instead of this runner

      - name: Pushed
        if: always()
        env:
          PUSHED: ${{ steps.mergehub.outputs.pushed-repos }} # through env, never straight into the script
        run: |
          echo "Pushed to the Hub: ${PUSHED:-[]}"
"""


def workflow_yaml(uses: str) -> str:
    """The workflow, running the Action `uses` (`owner/repo@tag-or-sha`).

    Raises:
        MergehubError: `uses` is not of the form `owner/repo@ref`.
    """
    if not _USES.match(uses):
        raise MergehubError(
            f"{uses!r} is not an Action reference.",
            hint="Pass `--uses OWNER/REPO@REF`: the GitHub repository of mergehub at a release tag or a commit SHA.",
        )
    return _TEMPLATE.replace(_MARK, uses)


def installed_action(direct_url: str | None = None) -> str | None:
    """`owner/repo@commit` of the GitHub repository this mergehub was installed from, when pip recorded one
    (PEP 610 `direct_url.json`); None for an install from a registry or a local directory."""
    if direct_url is None:
        try:
            direct_url = metadata.distribution("mergehub").read_text("direct_url.json")
        except metadata.PackageNotFoundError:
            return None
    try:
        data = json.loads(direct_url or "")
    except ValueError:
        return None
    vcs = data.get("vcs_info") if isinstance(data, dict) else None
    match = _GITHUB_URL.match(str(data.get("url", ""))) if isinstance(vcs, dict) else None
    commit = str(vcs.get("commit_id", "")) if isinstance(vcs, dict) else ""
    return f"{match['repo']}@{commit}" if match and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def init_workflow(root: Path, uses: str | None = None, *, overwrite: bool = False) -> Path:
    """Write the workflow into the repository at `root`; returns its path.

    Raises:
        MergehubError: no `uses` and none recorded by the install, a malformed `uses`, or a workflow already
            there (without `overwrite`).
    """
    uses = uses or installed_action()
    if uses is None:
        raise MergehubError(
            "Cannot tell which repository the workflow should run the mergehub Action from.",
            hint="Pass `--uses OWNER/REPO@REF`: the GitHub repository you install mergehub from, at a release tag "
            "or a full commit SHA.",
        )
    text = workflow_yaml(uses)
    path = root / WORKFLOW_PATH
    if path.exists() and not overwrite:
        raise MergehubError(f"{path} already exists.", hint="Pass --force to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def add_commands(commands: Any) -> None:
    """Add `action init` to the CLI's subcommands."""
    action = commands.add_parser("action", help="set up the mergehub GitHub Action in a repository")
    steps = action.add_subparsers(dest="action_command", required=True)
    init = steps.add_parser("init", help=f"write {WORKFLOW_PATH} (merge the repository's recipes on push)")
    init.add_argument("root", nargs="?", default=".", help="the repository's root (default: here)")
    init.add_argument("--uses", help="the Action to run, OWNER/REPO@TAG-OR-SHA (default: where mergehub came from)")
    init.add_argument("--force", action="store_true", help="replace an existing workflow file")


def _action(args: argparse.Namespace) -> int:
    path = init_workflow(Path(args.root), args.uses, overwrite=args.force)
    print(f"wrote {path}: add a repository secret HF_TOKEN (a write token), then commit recipes under recipes/")
    return 0


COMMANDS = {"action": _action}
