"""Read-only lookups besides the table: the dry run, the Hub model search and a model's lineage."""

from __future__ import annotations

from mergehub import api
from mergehub.errors import MergehubError
from mergehub.interfaces.space.safety import (
    check_document_text,
    check_hub_reference,
    refuse_local_shadows,
    scrub,
    user_message,
)


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


def search_models(query: str, token: str | bool = False, limit: int = 20) -> list[str]:
    """Hub model IDs matching `query` (most downloaded first); empty on any failure."""
    query = (query or "").strip()
    if len(query) < 2 or len(query) > 96:
        return []
    try:
        from huggingface_hub import HfApi

        return [m.id for m in HfApi(token=token).list_models(search=query, limit=limit, sort="downloads")]
    except Exception:  # noqa: BLE001 - search is a convenience; typing an ID still works
        return []


def lineage_markdown(model_id: str, token: str | bool) -> str:
    """The family tree of a Hub model: a Mermaid diagram and a text tree, when mergehub has lineage support."""
    try:
        ref = check_hub_reference(model_id)
    except MergehubError as e:
        return "❌ " + user_message(e, [token])
    try:
        graph = api.lineage(ref.partition("@")[0], token=token)
    except Exception as e:  # noqa: BLE001 - shown to the visitor, scrubbed
        return "❌ " + user_message(e, [token])
    return scrub(f"```mermaid\n{graph.to_mermaid()}\n```\n\n```text\n{graph.to_tree()}\n```", [token])
