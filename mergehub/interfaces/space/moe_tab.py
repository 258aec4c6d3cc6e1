"""The MoE tab: base, experts with prompts, gate mode and experts per token → a mergekit-moe config, checked
from headers (the dry run) before anything is read, then merged and pushed like a recipe (needs gradio)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from mergehub.interfaces.space.job import Session, merge
from mergehub.interfaces.space.lookups import dry_run, search_models
from mergehub.interfaces.space.moe_form import (
    GATE_MODE_CHOICES,
    MAX_EXPERTS,
    ExpertRow,
    MoEForm,
    form_from_values,
    moe_repo_name,
    moe_status,
    moe_yaml,
)
from mergehub.interfaces.space.safety import read_token

__all__ = ["build_moe_tab", "EXAMPLE_FORM"]

EXAMPLE_FORM = MoEForm(
    base="mistralai/Mistral-7B-v0.1",
    experts=(
        ExpertRow("org/mistral-math", "Solve the equation\nCompute the integral of"),
        ExpertRow("org/mistral-chat", "Tell me about your day"),
        ExpertRow("org/mistral-code", "Write a Python function that"),
    ),
)
"""What the tab shows first: the typical config (a Mistral base with math, chat and code experts)."""


def build_moe_tab(session: gr.State, runner: Callable[..., Iterator[tuple[str, Any]]]) -> None:
    """The tab's components and handlers, created in the current `gr.Blocks` (inside a `gr.Tab`)."""
    first = moe_yaml(EXAMPLE_FORM)
    gr.Markdown(
        "Assemble a **mixture of experts** (as `mergekit-moe` does): fine-tunes of one base become the experts of "
        "a Mixtral-style model (Qwen2-MoE or Qwen3-MoE from Qwen experts). Each expert's prompts describe what it "
        "handles; the router is initialised from them."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            base = gr.Dropdown(
                [], value=EXAMPLE_FORM.base, label="Base model", allow_custom_value=True, filterable=True
            )
            with gr.Row():
                gate_mode = gr.Dropdown(
                    [list(choice) for choice in GATE_MODE_CHOICES], value="hidden", label="Gate mode"
                )
                per_token = gr.Number(2, label="Experts per token", minimum=1, maximum=MAX_EXPERTS, precision=0)
                dtype = gr.Dropdown(["bfloat16", "float16", "float32"], value="bfloat16", label="dtype")
            count = gr.Slider(1, MAX_EXPERTS, value=len(EXAMPLE_FORM.experts), step=1, label="Number of experts")
            rows, fields = [], []
            for i in range(MAX_EXPERTS):
                shown = EXAMPLE_FORM.experts[i] if i < len(EXAMPLE_FORM.experts) else ExpertRow()
                with gr.Group(visible=i < len(EXAMPLE_FORM.experts)) as row:
                    model = gr.Dropdown(
                        [], value=shown.model, label=f"Expert {i + 1}", allow_custom_value=True, filterable=True
                    )
                    with gr.Row():
                        positive = gr.Textbox(shown.positive, label="Positive prompts (one a line)", lines=2)
                        negative = gr.Textbox(shown.negative, label="Negative prompts (optional)", lines=2)
                rows.append(row)
                fields += [model, positive, negative]
        with gr.Column(scale=1):
            config_box = gr.Code(
                first,
                language="yaml",
                label="mergekit-moe config: edit here or in the form",
                interactive=True,
                lines=18,
            )
            note = gr.Markdown(moe_status(first))
            plan_button = gr.Button("Check models (dry run)")
            plan_box = gr.Textbox(label="Plan", lines=8, max_lines=20, visible=False)
    with gr.Row():
        repo_box = gr.Textbox(moe_repo_name(EXAMPLE_FORM), label="Output repo: a name or namespace/name", scale=3)
        private_box = gr.Checkbox(label="Private", value=False, scale=1)
    with gr.Row():
        merge_button = gr.Button("Assemble and push", variant="primary")
        cancel_button = gr.Button("Cancel", variant="stop")
    status = gr.Markdown()
    log_box = gr.Textbox(label="Log", lines=10, max_lines=20, autoscroll=True, interactive=False)
    with gr.Accordion("Model card of the new repo", open=True):
        card = gr.Markdown()

    form_inputs = [base, gate_mode, per_token, dtype, count, *fields]

    def on_moe_form(repo: str, base_value: str, mode: str, per: float, dt: str, shown: float, *values: str) -> tuple:
        form = form_from_values(base_value, mode, per, dt, shown, values)
        text = moe_yaml(form)
        visible = [gr.update(visible=i < int(shown or 1)) for i in range(MAX_EXPERTS)]
        automatic = not (repo or "").strip() or (repo or "").strip().endswith("-moe")  # else the visitor's own name
        return (text, moe_status(text), gr.update(value=moe_repo_name(form)) if automatic else gr.update(), *visible)

    def on_moe_yaml(text: str) -> str:
        return moe_status(text or "")

    def on_moe_search(key: gr.KeyUpData, oauth_token: gr.OAuthToken | None) -> Any:
        ids = search_models(key.input_value, read_token(oauth_token))
        return gr.update(choices=ids) if ids else gr.update()

    def on_moe_plan(text: str, oauth_token: gr.OAuthToken | None) -> Any:
        return gr.update(value=dry_run(text or "", read_token(oauth_token)), visible=True)

    def on_moe_arm(session_value: Session) -> str:
        session_value.arm()
        return "⏳ Waiting for a free slot (one merge runs at a time)..."

    def on_moe_merge(
        text: str,
        repo_name: str,
        private: bool,
        session_value: Session,
        oauth_token: gr.OAuthToken | None,
        progress=gr.Progress(),  # noqa: B008 - gradio's way to ask for a progress tracker
    ):
        yield from merge(text, repo_name, private, session_value, oauth_token, progress, runner=runner)

    def on_moe_cancel(session_value: Session) -> str:
        return "⏹️ Cancelling: nothing will be pushed." if session_value.cancel() else "⏹️ Cancelled."

    quick = dict(concurrency_limit=None, show_progress="hidden")
    for component in form_inputs:
        component.input(on_moe_form, [repo_box, *form_inputs], [config_box, note, repo_box, *rows], **quick)
    config_box.input(on_moe_yaml, config_box, note, trigger_mode="always_last", **quick)
    for dropdown in (base, *fields[::3]):
        dropdown.key_up(on_moe_search, None, dropdown, trigger_mode="always_last", **quick)
    plan_button.click(on_moe_plan, config_box, plan_box, concurrency_limit=4, concurrency_id="checks")
    merge_button.click(on_moe_arm, session, status, **quick).then(
        on_moe_merge,
        [config_box, repo_box, private_box, session],
        [status, log_box, card],
        concurrency_limit=1,
        concurrency_id="merge",
        show_progress_on=[status],
        api_name="merge_moe",
    )
    cancel_button.click(on_moe_cancel, session, status, **quick)
