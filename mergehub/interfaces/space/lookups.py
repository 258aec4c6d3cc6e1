"""Read-only lookups besides the table: the plan check, the dry run, the Hub model search and a model's lineage."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from mergehub import api
from mergehub.errors import MergehubError, SourceError
from mergehub.interfaces.space.safety import (
    check_document_text,
    check_hub_reference,
    refuse_local_shadows,
    scrub,
    user_message,
)
from mergehub.interfaces.space.text import DONE, FAILED, WARNING, link, plain, status, table
from mergehub.publish.card_data import card_scores, mergehub_record
from mergehub.recipe import RECIPE_FILE
from mergehub.units import format_size

_CHECKED: OrderedDict[tuple[str, str | bool, bool], str] = OrderedDict()
_CHECKS_KEPT = 64


def plan_check(recipe_text: str, token: str | bool, *, strict: bool = False) -> str:
    """The line under the recipe: "Valid recipe" only when the plan that Merge would make succeeds (method rules,
    required parameters, model counts, shapes), from configs and headers; else the error, as plain text.

    Results are remembered per recipe text, token and strictness, so that edits back and forth stay fast.
    """
    key = (recipe_text, token, strict)
    if key in _CHECKED:
        _CHECKED.move_to_end(key)
        return _CHECKED[key]
    try:
        recipe = check_document_text(recipe_text)
        refuse_local_shadows(recipe)
        plan = api.plan_merge(recipe, token=token, strict=strict)
    except Exception as e:  # noqa: BLE001 - shown to the visitor, scrubbed
        return status(FAILED, user_message(e, [token]))  # not remembered: the Hub may answer otherwise next time
    said = (
        f"Valid recipe: the plan check passed ({plan.method}, {len(plan.models)} models, {len(plan.jobs)} "
        f"tensors, reads {format_size(plan.read_bytes)})."
    )
    line = status(DONE, said)
    if plan.warnings:
        line += "  \n" + status(WARNING, f"{len(plan.warnings)} warning(s): see the dry run.")
    _CHECKED[key] = line
    while len(_CHECKED) > _CHECKS_KEPT:
        _CHECKED.popitem(last=False)
    return line


def dry_run(recipe_text: str, token: str | bool, max_lines: int = 120, *, strict: bool = False) -> str:
    """The plan of the recipe (`--dry-run`), from configs and headers only; its warnings come before the tensors.

    With `strict`, a recipe with warnings fails, as the merge would.
    """
    try:
        recipe = check_document_text(recipe_text)
        refuse_local_shadows(recipe)
        plan = api.plan_merge(recipe, token=token, strict=strict)
    except Exception as e:  # noqa: BLE001 - shown to the visitor, scrubbed
        return "Plan failed:\n" + user_message(e, [token])
    lines = plan.describe().splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... {len(lines) - max_lines} more lines"]
    ignored = (
        f"; {len(plan.warnings)} warning(s): what they name is ignored, as mergekit ignores it" if plan.warnings else ""
    )
    return scrub("\n".join(lines + [f"Plan OK: no problems found{ignored}."]), [token])


def search_models(query: str, token: str | bool = False, limit: int = 20) -> tuple[list[str], str]:
    """Hub model IDs matching `query` (most downloaded first), and what to tell the visitor about the search:
    "" when models were found or the query is too short, "No models found for ..." or "Search failed: ..."."""
    query = (query or "").strip()
    if len(query) < 2 or len(query) > 96:
        return [], ""
    try:
        from huggingface_hub import HfApi

        ids = [m.id for m in HfApi(token=token).list_models(search=query, limit=limit, sort="downloads")]
    except Exception as e:  # noqa: BLE001 - search is a convenience; typing an ID still works
        reason = scrub(str(e).splitlines()[0] if str(e) else type(e).__name__, [token])
        return [], f"Search failed: {reason}. You can still type a model ID."
    return ids, "" if ids else f"No models found for “{query}”. Check the spelling, or type the full ID."


def lineage_markdown(model_id: str, token: str | bool) -> str:
    """The family tree of a Hub model: a Mermaid diagram and a text tree, when mergehub has lineage support."""
    try:
        ref = check_hub_reference(model_id)
    except MergehubError as e:
        return status(FAILED, user_message(e, [token]))
    try:
        graph = api.lineage(ref.partition("@")[0], token=token)
    except Exception as e:  # noqa: BLE001 - shown to the visitor, scrubbed
        return status(FAILED, user_message(e, [token]))
    return scrub(f"```mermaid\n{graph.to_mermaid()}\n```\n\n```text\n{graph.to_tree()}\n```", [token])


@dataclass(frozen=True)
class MyMerge:
    """One of the signed-in user's merges, as its Hub listing and card tell it."""

    repo_id: str
    date: str
    method: str
    parents: tuple[str, ...]
    scores: tuple[str, ...]


def my_merges(username: str, token: str | bool, limit: int = 100) -> list[MyMerge]:
    """The user's repos tagged `mergehub`, newest first, with method, parents and scores from their cards.

    Raises:
        SourceError: the Hub cannot be asked.
    """
    from huggingface_hub import HfApi

    try:
        listed = list(
            HfApi(token=token).list_models(
                author=username, filter="mergehub", sort="lastModified", limit=limit, cardData=True
            )
        )
    except Exception as e:  # noqa: BLE001 - one message for the page
        raise SourceError(
            f"Listing {username}'s merges failed: {scrub(str(e).splitlines()[0] if str(e) else type(e).__name__)}.",
            hint="Try again in a minute.",
        ) from e
    merges = []
    for info in listed:
        data = info.card_data
        record = mergehub_record(data)
        parents = record.get("parents") or {}
        base = (data.to_dict() if data is not None else {}).get("base_model") or []
        when = info.last_modified or info.created_at
        merges.append(
            MyMerge(
                info.id,
                when.strftime("%Y-%m-%d %H:%M") if when else "",
                str(record.get("method") or ""),
                tuple(parents)
                if isinstance(parents, dict) and parents
                else tuple([base] if isinstance(base, str) else base),
                tuple(
                    f"{r.dataset_name or r.task_name} {r.metric_type} {r.metric_value:.4f}" for r in card_scores(data)
                ),
            )
        )
    return merges


def my_merges_markdown(merges: list[MyMerge], endpoint: str) -> str:
    """The My merges table: each merge linked to its card, with date, method, parents and scores (plain text)."""
    if not merges:
        return "No merges yet: repos you merge here (tagged `mergehub`) are listed after your first merge."
    rows = [
        [
            link(m.repo_id, f"{endpoint.rstrip('/')}/{m.repo_id}"),
            plain(m.date),
            plain(m.method or "?"),
            plain(", ".join(m.parents) or "?"),
            plain("; ".join(m.scores) or "not evaluated"),
        ]
        for m in merges
    ]
    return table(["Merge", "Date", "Method", "Parents", "Scores"], rows)


def merge_recipe(repo_id: str, token: str | bool) -> str:
    """The recipe a merge was made from (its `mergekit_config.yml`), to load back into the form.

    Raises:
        SourceError: the repo has no recipe, or cannot be read.
    """
    from huggingface_hub import hf_hub_download

    ref = check_hub_reference(repo_id)
    try:
        path = hf_hub_download(ref, RECIPE_FILE, token=token)
    except Exception as e:  # noqa: BLE001 - one message for the page
        raise SourceError(f"{ref} has no readable {RECIPE_FILE}.", hint="Choose one of the merges listed above.") from e
    with open(path, encoding="utf-8") as f:
        return f.read()
