"""The MoE tab's form as plain values, and the mergekit-moe YAML it makes (no gradio here).

The form holds the base model, up to `MAX_EXPERTS` experts (a model, its positive prompts and its negative
prompts, one prompt a line), the gate mode, the experts per token and the dtype; `moe_yaml` writes the
mergekit-moe config the merge runs, and `moe_status` says whether the Space would accept it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from mergehub.errors import MergehubError
from mergehub.interfaces.space.presets import default_repo_name
from mergehub.interfaces.space.safety import MAX_MODELS, check_moe_text, user_message

__all__ = [
    "MAX_EXPERTS",
    "GATE_MODE_CHOICES",
    "ExpertRow",
    "MoEForm",
    "form_from_values",
    "moe_yaml",
    "moe_status",
    "moe_repo_name",
]

MAX_EXPERTS = MAX_MODELS - 1
"""The most experts the tab shows: with the base, the Space's model limit."""
GATE_MODE_CHOICES = (
    ("hidden: the base's hidden states over each expert's prompts", "hidden"),
    ("cheap_embed: the prompts' token embeddings", "cheap_embed"),
    ("random: Gaussian router weights (needs fine-tuning)", "random"),
    ("uniform_random: uniform router weights (needs fine-tuning)", "uniform_random"),
)
"""The gate modes the tab offers, as (label, mergekit-moe name)."""


@dataclass(frozen=True)
class ExpertRow:
    """One expert in the form: its model, and its positive and negative prompts, one a line."""

    model: str = ""
    positive: str = ""
    negative: str = ""


@dataclass(frozen=True)
class MoEForm:
    """The MoE tab's fields."""

    base: str = ""
    experts: tuple[ExpertRow, ...] = ()
    gate_mode: str = "hidden"
    experts_per_token: int = 2
    dtype: str = "bfloat16"


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def moe_yaml(form: MoEForm) -> str:
    """The mergekit-moe config of the form; experts without a model are left out, as are empty prompts."""
    config: dict = {"base_model": form.base.strip(), "gate_mode": form.gate_mode}
    if form.dtype:
        config["dtype"] = form.dtype
    config["experts_per_token"] = int(form.experts_per_token)
    experts = []
    for row in form.experts:
        if not row.model.strip():
            continue
        expert: dict = {"source_model": row.model.strip()}
        if _lines(row.positive):
            expert["positive_prompts"] = _lines(row.positive)
        if _lines(row.negative):
            expert["negative_prompts"] = _lines(row.negative)
        experts.append(expert)
    config["experts"] = experts
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000)


def moe_status(text: str) -> str:
    """The line under the YAML: valid, or the error and its hint (checked as the merge would, without the Hub)."""
    try:
        check_moe_text(text)
    except MergehubError as e:
        return "❌ " + user_message(e).replace("\n", "  \n")
    return "✅ Valid MoE config."


def moe_repo_name(form: MoEForm) -> str:
    """A default repo name: the base's and the experts' names, then `moe`."""
    models = [form.base, *(row.model for row in form.experts)]
    return default_repo_name(f"{len([r for r in form.experts if r.model.strip()])}x-moe", models)


def form_from_values(
    base: str, gate_mode: str, per_token: float, dtype: str, count: float, rows: Sequence[str]
) -> MoEForm:
    """The form from the tab's component values; `rows` are (model, positive, negative) for every row shown."""
    shown = max(1, min(int(count or 1), MAX_EXPERTS))
    experts = tuple(ExpertRow(*(value or "" for value in rows[3 * i : 3 * i + 3])) for i in range(shown))
    return MoEForm(base or "", experts, gate_mode or "hidden", int(per_token or 2), dtype or "")
