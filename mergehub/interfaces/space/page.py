"""The page: the Space's `gr.Blocks` layout and the handlers wired to it (needs gradio, the `space` extra)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from mergehub.errors import MergehubError
from mergehub.interfaces.space.compat import check_models, layer_count
from mergehub.interfaces.space.extract import extract, extraction_dry_run
from mergehub.interfaces.space.form import Form, form_to_yaml, form_with_method, recipe_extras, yaml_to_form
from mergehub.interfaces.space.job import Session, extract_stream, job_runner, merge
from mergehub.interfaces.space.lookups import dry_run, lineage_markdown, search_models
from mergehub.interfaces.space.presets import EXAMPLE_LAYERS, EXAMPLE_MODELS, PRESETS, default_repo_name, preset_form
from mergehub.interfaces.space.safety import MAX_MODELS, check_recipe_text, read_token, user_message

try:  # the `space` extra; the rest of the package works without it
    import gradio as gr
except ImportError:  # pragma: no cover - exercised only without the extra
    gr = None  # type: ignore[assignment]


def _recipe_status(text: str) -> str:
    """The line under the YAML box: valid, or the error and its hint."""
    try:
        check_recipe_text(text)
    except MergehubError as e:
        return "❌ " + user_message(e).replace("\n", "  \n")
    return "✅ Valid recipe."


def build_app() -> Any:
    """Build the Space's `gr.Blocks` (without launching it).

    Raises:
        ImportError: gradio (the `space` extra) is not installed.
    """
    if gr is None:
        raise ImportError("The Space needs gradio: pip install 'mergehub[space]'")
    from mergehub.interfaces.space.moe_tab import build_moe_tab  # imports gradio
    from mergehub.interfaces.space.view import FormView  # imports gradio

    runner, extract_runner = job_runner(), job_runner(extract_stream)
    eval_available = importlib.util.find_spec("mergehub.eval") is not None
    initial = preset_form(PRESETS[0])
    initial_yaml, _ = form_to_yaml(initial)

    with gr.Blocks(title="mergehub: merge models on the Hub") as demo:
        session = gr.State(lambda: Session())  # a fresh Session per browser session
        auto_name = gr.State("")
        with gr.Row():
            gr.Markdown(
                "# mergehub\nMerge language models with [mergekit](https://github.com/arcee-ai/mergekit) recipes, "
                "streamed tensor by tensor, and push the result to your Hugging Face account."
            )
            gr.LoginButton(scale=0, min_width=240)
        user = gr.Markdown()
        with gr.Tab("Merge"):
            with gr.Row():
                preset_buttons = [gr.Button(name, size="sm") for name in PRESETS]
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    view = FormView(MAX_MODELS)
                with gr.Column(scale=1):
                    recipe_box = gr.Code(
                        initial_yaml,
                        language="yaml",
                        label="Recipe (mergekit YAML): edit here or in the form",
                        interactive=True,
                        lines=18,
                    )
                    recipe_note = gr.Markdown(_recipe_status(initial_yaml))
                    with gr.Row():
                        check_button = gr.Button("Check models")
                        plan_button = gr.Button("Dry run")
                    compat = gr.Markdown(
                        "Check the models to compare architectures, sizes, dtypes and licenses "
                        "(configs and headers only, no weights)."
                    )
                    plan_box = gr.Textbox(label="Plan", lines=8, max_lines=20, visible=False)
            with gr.Row():
                repo_box = gr.Textbox(label="Output repo: a name (created in your account) or namespace/name", scale=3)
                private_box = gr.Checkbox(label="Private", value=False, scale=1)
                strict_box = gr.Checkbox(
                    label="Strict",
                    value=False,
                    scale=1,
                    info="Refuse a recipe with warnings (keys or parameters mergekit would ignore).",
                )
            gr.CheckboxGroup(
                ["hellaswag", "arc_easy", "mmlu"],
                label="Evaluate after merging",
                interactive=False,
                info="Coming soon."
                if not eval_available
                else "Coming soon: evaluation is not wired into the Space yet.",
            )
            with gr.Row():
                merge_button = gr.Button("Merge and push", variant="primary")
                cancel_button = gr.Button("Cancel", variant="stop")
            status = gr.Markdown()
            log_box = gr.Textbox(label="Log", lines=10, max_lines=20, autoscroll=True, interactive=False)
            with gr.Accordion("Model card of the new repo", open=True):
                card = gr.Markdown()
        with gr.Tab("MoE"):
            build_moe_tab(session, runner)
        with gr.Tab("Extract LoRA"):
            gr.Markdown(
                "Extract a LoRA adapter from a fine-tune: each module's change from the base, factored by "
                "truncated SVD (as `mergekit-extract-lora`), streamed from the Hub. The card lists each module's "
                "reconstruction error."
            )
            with gr.Row():
                extract_base = gr.Dropdown([], value="", label="Base model", allow_custom_value=True, filterable=True)
                extract_model = gr.Dropdown([], value="", label="Fine-tune", allow_custom_value=True, filterable=True)
            with gr.Row():
                extract_rank = gr.Number(32, label="Rank (largest)", precision=0, minimum=1)
                extract_energy = gr.Number(None, label="Energy to keep (optional, e.g. 0.9)", minimum=0, maximum=1)
                extract_embed = gr.Checkbox(label="Embeddings as LoRA", value=False, info="Else they are saved whole.")
            with gr.Row():
                extract_repo = gr.Textbox(
                    label="Adapter repo: a name (created in your account) or namespace/name", scale=3
                )
                extract_private = gr.Checkbox(label="Private", value=False, scale=1)
            with gr.Row():
                extract_plan_button = gr.Button("Dry run")
                extract_button = gr.Button("Extract and push", variant="primary")
                extract_cancel = gr.Button("Cancel", variant="stop")
            extract_plan = gr.Textbox(label="Plan", lines=8, max_lines=20, visible=False)
            extract_status = gr.Markdown()
            extract_log = gr.Textbox(label="Log", lines=8, max_lines=20, autoscroll=True, interactive=False)
            with gr.Accordion("Model card of the adapter", open=True):
                extract_card = gr.Markdown()
        with gr.Tab("Lineage"):
            with gr.Row():
                lineage_id = gr.Dropdown([], value="", label="Model", allow_custom_value=True, filterable=True, scale=3)
                lineage_button = gr.Button("Show the family tree", scale=1)
            lineage_out = gr.Markdown()

        def on_form_input(data: dict) -> dict:
            previous = data[recipe_box] or ""
            try:
                _, hidden = yaml_to_form(previous)
            except MergehubError:
                hidden = []
            if hidden:  # the form would drop what it cannot show: leave the YAML alone
                return {
                    recipe_note: "⚠️ The form cannot show "
                    + ", ".join(hidden)
                    + " of this recipe, so it does not rewrite it. "
                    "Edit the YAML, or pick a preset or a method to start over from the form."
                }
            _, position = recipe_extras(previous)
            form = view.collect(data, position)
            text, problems = form_to_yaml(form, previous)
            return {
                recipe_box: text,
                recipe_note: _recipe_status(text) + ("  \n⚠️ Left out: " + "; ".join(problems) if problems else ""),
            }

        def on_method_input(data: dict) -> dict:
            previous = data[recipe_box] or ""
            try:
                old, problems = yaml_to_form(previous)
            except MergehubError:
                old, problems = None, []
            if old is None or problems:  # start over from the models in the form
                fields = view.collect(data)
                old = Form(fields.method, fields.base, fields.models, [{} for _ in fields.models], {}, "", fields.dtype)
            form = form_with_method(old, data[view.method] or "slerp")
            text, _ = form_to_yaml(form, previous)
            return {**view.render(form), recipe_box: text, recipe_note: _recipe_status(text)}

        def on_yaml_input(text: str) -> dict:
            try:
                form, problems = yaml_to_form(text or "")
            except MergehubError as e:
                return {recipe_note: "❌ " + user_message(e).replace("\n", "  \n")}
            note = "✅ Valid recipe." + (
                "  \n⚠️ The form cannot show " + ", ".join(problems) + "; the YAML is what will be merged."
                if problems
                else ""
            )
            return {**view.render(form), recipe_note: note}

        def preset_handler(name: str) -> Callable[..., dict]:
            def on_preset(data: dict, oauth_token: gr.OAuthToken | None) -> dict:
                current = view.collect(data)
                models = [m for m in (current.base, *current.models) if m]
                if all(m in EXAMPLE_MODELS for m in models):
                    models = []
                layers = EXAMPLE_LAYERS
                if models and name == "Passthrough frankenmerge":
                    layers = layer_count(models[0], read_token(oauth_token)) or EXAMPLE_LAYERS
                form = preset_form(name, models, layers)
                text, _ = form_to_yaml(form)
                return {**view.render(form), recipe_box: text, recipe_note: _recipe_status(text)}

            return on_preset

        def on_count(data: dict) -> dict:
            count = int(data[view.count] or 1)
            return {**{row: gr.update(visible=i < count) for i, row in enumerate(view.rows)}, **on_form_input(data)}

        def on_search(key: gr.KeyUpData, oauth_token: gr.OAuthToken | None) -> Any:
            ids = search_models(key.input_value, read_token(oauth_token))
            return gr.update(choices=ids) if ids else gr.update()

        def on_check(text: str, oauth_token: gr.OAuthToken | None) -> str:
            return check_models(text or "", read_token(oauth_token))

        def on_plan(text: str, strict: bool, oauth_token: gr.OAuthToken | None) -> Any:
            return gr.update(value=dry_run(text or "", read_token(oauth_token), strict=bool(strict)), visible=True)

        def on_name(text: str, current: str, auto: str) -> tuple[Any, str]:
            try:
                recipe = check_recipe_text(text or "")
            except MergehubError:
                return gr.update(), auto
            name = default_repo_name(recipe.merge_method, [str(r) for r in recipe.referenced_models()])
            if (current or "").strip() in ("", auto):
                return gr.update(value=name), name
            return gr.update(), name if current == name else auto

        def on_user(profile: gr.OAuthProfile | None) -> str:
            if profile is None:
                return "Not signed in: you can build recipes, check models and dry-run; sign in to merge and push."
            return f"Signed in as **{profile.username}**: merges are pushed to your account."

        def on_arm(session_value: Session) -> str:
            session_value.arm()
            return "⏳ Waiting for a free slot (one merge runs at a time)..."

        def on_merge(
            recipe_text: str,
            repo_name: str,
            private: bool,
            strict: bool,
            session_value: Session,
            oauth_token: gr.OAuthToken | None,
            progress=gr.Progress(),  # noqa: B008 - gradio's way to ask for a progress tracker
        ):
            yield from merge(
                recipe_text,
                repo_name,
                private,
                session_value,
                oauth_token,
                progress,
                runner=runner,
                strict=bool(strict),
            )

        def on_cancel(session_value: Session) -> str:
            running = session_value.cancel()
            return (
                "⏹️ Cancelling: the merge stops before its next tensor; nothing will be pushed."
                if running
                else "⏹️ Cancelled."
            )

        def on_extract_plan(
            base: str, model: str, rank: float, energy: float, embed: bool, oauth_token: gr.OAuthToken | None
        ) -> Any:
            return gr.update(
                value=extraction_dry_run(base, model, rank, energy, embed, read_token(oauth_token)), visible=True
            )

        def on_extract(
            base: str,
            model: str,
            rank: float,
            energy: float,
            embed: bool,
            repo_name: str,
            private: bool,
            session_value: Session,
            oauth_token: gr.OAuthToken | None,
            progress=gr.Progress(),  # noqa: B008 - gradio's way to ask for a progress tracker
        ):
            yield from extract(
                base,
                model,
                rank,
                energy,
                embed,
                repo_name,
                private,
                session_value,
                oauth_token,
                progress,
                runner=extract_runner,
            )

        def on_lineage(model_id: str, oauth_token: gr.OAuthToken | None) -> str:
            return lineage_markdown(model_id or "", read_token(oauth_token))

        quick = dict(concurrency_limit=None, show_progress="hidden")
        checks = dict(concurrency_limit=4, concurrency_id="checks")
        for component in view.fields:
            component.input(on_form_input, view.inputs | {recipe_box}, [recipe_box, recipe_note], **quick)
        view.count.input(on_count, view.inputs | {recipe_box}, [*view.rows, recipe_box, recipe_note], **quick)
        view.method.input(
            on_method_input, view.inputs | {recipe_box}, [*view.outputs, recipe_box, recipe_note], **quick
        )
        recipe_box.input(on_yaml_input, recipe_box, [*view.outputs, recipe_note], trigger_mode="always_last", **quick)
        for name, button in zip(PRESETS, preset_buttons, strict=True):
            button.click(preset_handler(name), view.inputs, [*view.outputs, recipe_box, recipe_note], **quick)
        for dropdown in [view.base, *view.models, lineage_id, extract_base, extract_model]:
            dropdown.key_up(on_search, None, dropdown, trigger_mode="always_last", **quick)
        recipe_box.change(on_name, [recipe_box, repo_box, auto_name], [repo_box, auto_name], **quick)
        check_button.click(on_check, recipe_box, compat, **checks)
        plan_button.click(on_plan, [recipe_box, strict_box], plan_box, **checks)
        merge_button.click(on_arm, session, status, **quick).then(
            on_merge,
            [recipe_box, repo_box, private_box, strict_box, session],
            [status, log_box, card],
            concurrency_limit=1,
            concurrency_id="merge",
            show_progress_on=[status],
            api_name="merge",  # the GitHub Action's `dispatch-to-space` calls this endpoint
        )
        cancel_button.click(on_cancel, session, status, **quick)
        extraction = [extract_base, extract_model, extract_rank, extract_energy, extract_embed]
        extract_plan_button.click(on_extract_plan, extraction, extract_plan, **checks)
        extract_button.click(on_arm, session, extract_status, **quick).then(
            on_extract,
            [*extraction, extract_repo, extract_private, session],
            [extract_status, extract_log, extract_card],
            concurrency_limit=1,
            concurrency_id="merge",
            show_progress_on=[extract_status],
            api_name="extract_lora",
        )
        extract_cancel.click(on_cancel, session, extract_status, **quick)
        lineage_button.click(on_lineage, lineage_id, lineage_out, **checks)
        demo.load(lambda: view.render(initial), None, view.outputs, **quick).then(
            on_name, [recipe_box, repo_box, auto_name], [repo_box, auto_name], **quick
        )
        demo.load(on_user, None, user, **quick)
    demo.queue(default_concurrency_limit=1)
    return demo
