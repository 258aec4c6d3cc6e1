"""Push an experiment's winner through mergehub's push path, with the experiment in its card as evidence.

The winner is merged again from its recipe (same seed, so the same weights), its scores from the experiment
go into the card's `model-index`, and the card gains a section with the experiment's table and plot; the plot,
the results table (CSV and JSON) are committed beside the model.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergehub import api
from mergehub.errors import ExperimentError
from mergehub.evaluation import EvalReport, add_scores_to_card, compare

__all__ = ["push_winner", "card_section"]

_RECIPE_HEADING = "\n## Recipe\n"


def card_section(title: str, text: str, table: str, images: Sequence[str]) -> str:
    """A card section: a heading, a paragraph, the linked images and the table."""
    lines = [f"## {title}", "", text, ""]
    lines += [f"![{Path(name).stem}]({name})" for name in images]
    return "\n".join([*lines, "", table, ""]) + "\n"


def _insert_section(card: str, section: str) -> str:
    at = card.find(_RECIPE_HEADING)
    return card.rstrip("\n") + "\n\n" + section if at < 0 else card[: at + 1] + section + "\n" + card[at + 1 :]


def push_winner(
    recipe: Path,
    repo_id: str,
    *,
    report: EvalReport,
    table_markdown: str,
    section_title: str,
    section_text: str,
    evidence: Sequence[Path],
    images: Sequence[Path],
    parents: Mapping[str, EvalReport] | None = None,
    private: bool = False,
    force: bool = False,
    token: str | None = None,
    **merge_options: Any,
) -> api.PushResult:
    """Merge `recipe` and push it to `repo_id`, its card carrying `report`'s scores (beside `parents`' when given)
    and the experiment's section with `table_markdown`.

    `evidence` and `images` are copied into the repo (the images are linked from the card).

    Raises:
        ExperimentError: an evidence file is missing.
        PublishError: no token, a repo mergehub did not make (without `force`), or an upload failure.
    """
    missing = [str(p) for p in [*evidence, *images] if not p.is_file()]
    if missing:
        raise ExperimentError(
            f"Cannot push: {', '.join(missing)} missing.", hint="Rerun the experiment into this --out directory."
        )

    def add_experiment(result: api.MergeResult) -> None:
        for path in [*evidence, *images]:
            shutil.copyfile(path, result.out_dir / path.name)
        card = result.out_dir / "README.md"
        comparison = compare(report, parents) if parents else None
        text = add_scores_to_card(card.read_text(encoding="utf-8"), report, comparison)
        section = card_section(section_title, section_text, table_markdown, [p.name for p in images])
        card.write_text(_insert_section(text, section), encoding="utf-8")

    _, pushed = api.push_merge(
        recipe, repo_id, private=private, force=force, token=token, before_commit=add_experiment, **merge_options
    )
    return pushed
