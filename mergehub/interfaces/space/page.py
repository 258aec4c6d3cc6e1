"""The page: the Space's `gr.Blocks` layout and the handlers wired to it (needs gradio, the `space` extra)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from mergehub.errors import MergehubError
from mergehub.interfaces.space.chat import (
    MAX_CPU_BYTES,
    MAX_GPU_BYTES,
    MAX_NEW_TOKENS,
    generator,
    parents_of,
    reply_stream,
)
from mergehub.interfaces.space.compat import check_models, layer_count
from mergehub.interfaces.space.extract import extract, extraction_dry_run
from mergehub.interfaces.space.form import (
    Form,
    comments,
    form_to_yaml,
    form_with_method,
    recipe_extras,
    yaml_to_form,
)
from mergehub.interfaces.space.job import EVAL_TASKS, Session, extract_stream, job_runner, merge
from mergehub.interfaces.space.lookups import (
    dry_run,
    lineage_markdown,
    merge_recipe,
    my_merges,
    my_merges_markdown,
    plan_check,
    search_models,
)
from mergehub.interfaces.space.presets import (
    EXAMPLE_LAYERS,
    EXAMPLE_MODELS,
    PRESETS,
    default_repo_name,
    missing_models,
    preset_form,
)
from mergehub.interfaces.space.safety import MAX_MODELS, check_recipe_text, read_token, user_message
from mergehub.interfaces.space.text import DONE, FAILED, LOCKED, STOPPED, WARNING, WORKING, plain, status
from mergehub.units import format_size

try:  # the `space` extra; the rest of the package works without it
    import gradio as gr
except ImportError:  # pragma: no cover - exercised only without the extra
    gr = None  # type: ignore[assignment]


def _recipe_status(text: str) -> str:
    """The line under the YAML box at once, before the plan check: the recipe's error, or that the check runs."""
    try:
        check_recipe_text(text)
    except MergehubError as e:
        return status(FAILED, user_message(e))
    return status(WORKING, "Checking the plan (model configs and headers)...")


def _note(*lines: str) -> str:
    """The note about the form and the YAML: warning lines, as plain text."""
    return "  \n".join(status(WARNING, line) for line in lines if line)


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
    eval_available = importlib.util.find_spec("lm_eval") is not None
    initial = preset_form(PRESETS[0], EXAMPLE_MODELS)
    initial_yaml, _ = form_to_yaml(initial)

    with gr.Blocks(title="mergehub: merge models on the Hub") as demo:
        session = gr.State(lambda: Session())  # a fresh Session per browser session
        auto_name = gr.State("")
        with gr.Row(equal_height=False):  # on a phone the sign-in button wraps below the title
            with gr.Column(scale=3, min_width=300):
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
                    plan_note = gr.Markdown(_recipe_status(initial_yaml))
                    recipe_note = gr.Markdown()
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
                replace_box = gr.Checkbox(
                    label="Replace an existing repo I own",
                    value=False,
                    scale=1,
                    info="Push into an existing repo of yours that mergehub did not make.",
                )
            with gr.Row(visible=eval_available):
                eval_box = gr.CheckboxGroup(
                    list(EVAL_TASKS),
                    label="Evaluate after merging (the merge and each parent)",
                    info="Scores go into the card's model-index, with a table of deltas against the parents. "
                    "mergehub_* tasks are offline; the others download their data set.",
                    scale=3,
                )
                limit_box = gr.Slider(
                    5,
                    200,
                    value=20,
                    step=5,
                    label="Documents per task",
                    info="Capped by model size: 100 up to 1 GB, 50 up to 4 GB, 20 beyond.",
                    scale=1,
                )
            with gr.Row():
                merge_button = gr.Button("Merge and push", variant="primary")
                cancel_button = gr.Button("Cancel", variant="stop")
            status_md = gr.Markdown()
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
        with gr.Tab("Try it"):
            gr.Markdown(
                "Talk to the model you just merged, or to any Hub model: the reply streams token by token, through "
                f"the tokenizer's chat template. Models up to {format_size(MAX_CPU_BYTES)} of weights run on the "
                f"CPU; on a GPU Space, up to {format_size(MAX_GPU_BYTES)}."
            )
            with gr.Row():
                chat_model = gr.Textbox(label="Model to talk to (org/name)", scale=3)
                compare_box = gr.Checkbox(
                    label="Compare with its parents", value=False, scale=1, info="The same prompt to each parent."
                )
            chatbot = gr.Chatbot(label="Chat", height=360)
            with gr.Row():
                chat_input = gr.Textbox(label="Message", scale=4, placeholder="Ask the model something")
                send_button = gr.Button("Send", variant="primary", scale=1)
            with gr.Row():
                tokens_box = gr.Slider(8, MAX_NEW_TOKENS, value=128, step=8, label="Max new tokens")
                temperature_box = gr.Slider(0, 1.5, value=0.7, step=0.05, label="Temperature (0: always the likeliest)")
            parents_out = gr.Markdown()
        with gr.Tab("My merges"):
            mine_button = gr.Button("List my merges")
            mine_out = gr.Markdown("Sign in, then list the repos you merged (tagged `mergehub`) with their scores.")
            with gr.Row():
                mine_pick = gr.Dropdown([], value=None, label="One of my merges", scale=3)
                load_button = gr.Button("Load its recipe into the form", scale=1)
                mine_lineage_button = gr.Button("Show its lineage", scale=1)
                mine_try_button = gr.Button("Try it", scale=1)
            mine_note = gr.Markdown()
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
            header, lost = comments(previous)
            if hidden or lost:  # the form would drop what it cannot show: leave the YAML alone
                what = ", ".join(hidden) if hidden else "the comments on line(s) " + ", ".join(map(str, lost))
                return {
                    recipe_note: _note(
                        f"The form cannot keep {what} of this recipe, so it does not rewrite it. Edit the YAML "
                        "(or remove what the form cannot keep), or pick a preset or a method to start over from "
                        "the form."
                    )
                }
            _, position = recipe_extras(previous)
            form = view.collect(data, position)
            text, problems = form_to_yaml(form, previous)
            return {
                recipe_box: header + text,
                recipe_note: _note("Left out: " + "; ".join(problems) if problems else ""),
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
            _, lost = comments(previous)
            note = _note("The comments of the recipe were dropped: the form rewrote it." if lost else "")
            return {**view.render(form), recipe_box: comments(previous)[0] + text, recipe_note: note}

        def on_yaml_input(text: str) -> dict:
            try:
                form, problems = yaml_to_form(text or "")
            except MergehubError:
                return {recipe_note: ""}  # the plan note says what is wrong
            note = _note(
                "The form cannot show " + ", ".join(problems) + "; the YAML is what will be merged." if problems else ""
            )
            return {**view.render(form), recipe_note: note}

        def preset_handler(name: str) -> Callable[..., dict]:
            def on_preset(data: dict, oauth_token: gr.OAuthToken | None) -> dict:
                current = view.collect(data)
                models = [m for m in (current.base, *current.models) if m]
                layers = EXAMPLE_LAYERS
                if models and name == "Passthrough frankenmerge":
                    layers = layer_count(models[0], read_token(oauth_token)) or EXAMPLE_LAYERS
                form = preset_form(name, models, layers)
                text, _ = form_to_yaml(form)
                return {**view.render(form), recipe_box: text, recipe_note: _note(missing_models(name, models))}

            return on_preset

        def on_count(data: dict) -> dict:
            count = int(data[view.count] or 1)
            return {**{row: gr.update(visible=i < count) for i, row in enumerate(view.rows)}, **on_form_input(data)}

        def on_search(key: gr.KeyUpData, oauth_token: gr.OAuthToken | None) -> Any:
            ids, said = search_models(key.input_value, read_token(oauth_token))
            info = said or ("Type to search the Hub, or paste `org/name`." if not ids else f"{len(ids)} found.")
            return gr.update(choices=ids, info=info) if ids else gr.update(info=info)

        def on_recipe_changed(text: str, shown: str) -> dict:
            cleared = {status_md: ""} if (shown or "").startswith(FAILED) else {}
            return {plan_note: _recipe_status(text or ""), **cleared}

        def on_plan_check(text: str, strict: bool, oauth_token: gr.OAuthToken | None) -> str:
            return plan_check(text or "", read_token(oauth_token), strict=bool(strict))

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
            return f"Signed in as **{plain(profile.username)}**: merges are pushed to your account."

        def on_arm(session_value: Session) -> str:
            session_value.arm()
            return status(WORKING, "Waiting for a free slot (one merge runs at a time)...")

        def on_merge(
            recipe_text: str,
            repo_name: str,
            private: bool,
            strict: bool,
            replace: bool,
            tasks: list[str] | None,
            limit: float,
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
                replace=bool(replace),
                eval_tasks=tuple(tasks or ()),
                eval_limit=int(limit or 20),
            )

        def cancel_handler(what: str) -> Callable[[Session], str]:
            def on_cancel(session_value: Session) -> str:
                waiting = session_value.job > session_value.started
                if session_value.cancel():
                    return status(
                        STOPPED, f"Cancelling: the {what} stops before its next tensor; nothing will be pushed."
                    )
                if waiting:
                    return status(STOPPED, "Cancelled before it started: nothing was pushed.")
                return status(STOPPED, f"Nothing to cancel: no {what} is running.")

            return on_cancel

        generate = generator()

        def on_send(
            model_id: str,
            message: str,
            history: list | None,
            max_new: float,
            temperature: float,
            compare: bool,
            oauth_token: gr.OAuthToken | None,
        ):
            token = read_token(oauth_token)
            history = list(history or [])
            if not (message or "").strip():
                yield history, message, status(WARNING, "Write a message first.")
                return
            asked = [*history, {"role": "user", "content": message}]
            options = dict(token=token, max_new_tokens=int(max_new), temperature=float(temperature), generate=generate)
            reply = ""
            for reply in reply_stream(model_id, history, message, **options):
                yield [*asked, {"role": "assistant", "content": reply}], "", ""
            if not compare or reply.startswith("❌"):
                return
            parents = parents_of(model_id, token)
            if not parents:
                yield gr.update(), "", status(WARNING, "The model's card names no parents to compare with.")
                return
            answers = {parent: "" for parent in parents}
            for parent in parents:
                for answer in reply_stream(parent, history, message, **options):
                    answers[parent] = answer
                    shown = [f"**{plain(p)}**: {plain(text) or '…'}" for p, text in answers.items()]
                    yield gr.update(), "", "\n\n".join(["The same prompt to each parent:", *shown])

        def on_pushed(session_value: Session) -> tuple[Any, Any]:
            if session_value.pushed is None:
                return gr.update(), gr.update()
            return gr.update(value=session_value.pushed), gr.update(value=session_value.pushed)

        def on_mine(profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> tuple[str, Any]:
            token = read_token(oauth_token)
            if profile is None or not isinstance(token, str):
                return status(LOCKED, "Sign in with Hugging Face (top right) to list your merges."), gr.update()
            try:
                merges = my_merges(profile.username, token)
            except MergehubError as e:
                return status(FAILED, user_message(e, [token])), gr.update()
            from huggingface_hub import constants

            ids = [m.repo_id for m in merges]
            pick = gr.update(choices=ids, value=ids[0] if ids else None)
            return my_merges_markdown(merges, constants.ENDPOINT), pick

        def on_load(repo_id: str | None, oauth_token: gr.OAuthToken | None) -> dict:
            if not repo_id:
                return {mine_note: status(WARNING, "List your merges, then choose one.")}
            try:
                text = merge_recipe(repo_id, read_token(oauth_token))
                form, problems = yaml_to_form(text)
            except MergehubError as e:
                return {mine_note: status(FAILED, user_message(e, [read_token(oauth_token)]))}
            said = f"Loaded the recipe of {repo_id} into the Merge tab: change it, then merge again."
            hidden = _note("The form cannot show " + ", ".join(problems) + "; the YAML is what will be merged.")
            return {
                **view.render(form),
                recipe_box: text,
                recipe_note: hidden if problems else "",
                mine_note: status(DONE, said),
            }

        def on_mine_lineage(repo_id: str | None, oauth_token: gr.OAuthToken | None) -> tuple[Any, str]:
            if not repo_id:
                return gr.update(), status(WARNING, "List your merges, then choose one.")
            return gr.update(value=repo_id), lineage_markdown(repo_id, read_token(oauth_token))

        def on_mine_try(repo_id: str | None) -> tuple[Any, str]:
            if not repo_id:
                return gr.update(), status(WARNING, "List your merges, then choose one.")
            return gr.update(value=repo_id), status(DONE, f"{repo_id} is ready in the Try it tab.")

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
        for trigger in (recipe_box.change, strict_box.change, demo.load):
            trigger(on_recipe_changed, [recipe_box, status_md], [plan_note, status_md], **quick).then(
                on_plan_check, [recipe_box, strict_box], plan_note, trigger_mode="always_last", **checks
            )
        check_button.click(on_check, recipe_box, compat, **checks)
        plan_button.click(on_plan, [recipe_box, strict_box], plan_box, **checks)
        merge_button.click(on_arm, session, status_md, **quick).then(
            on_merge,
            [recipe_box, repo_box, private_box, strict_box, replace_box, eval_box, limit_box, session],
            [status_md, log_box, card],
            concurrency_limit=1,
            concurrency_id="merge",
            show_progress_on=[status_md],
            api_name="merge",  # the GitHub Action's `dispatch-to-space` calls this endpoint
        ).then(on_pushed, session, [chat_model, lineage_id], **quick)
        cancel_button.click(cancel_handler("merge"), session, status_md, **quick)
        chats = dict(concurrency_limit=1, concurrency_id="chat")
        chat_inputs = [chat_model, chat_input, chatbot, tokens_box, temperature_box, compare_box]
        for trigger in (send_button.click, chat_input.submit):
            trigger(on_send, chat_inputs, [chatbot, chat_input, parents_out], **chats)
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
        extract_cancel.click(cancel_handler("extraction"), session, extract_status, **quick)
        lineage_button.click(on_lineage, lineage_id, lineage_out, **checks)
        mine_button.click(on_mine, None, [mine_out, mine_pick], **checks)
        load_button.click(on_load, mine_pick, [*view.outputs, recipe_box, recipe_note, mine_note], **checks)
        mine_lineage_button.click(on_mine_lineage, mine_pick, [lineage_id, lineage_out], **checks)
        mine_try_button.click(on_mine_try, mine_pick, [chat_model, mine_note], **quick)
        demo.load(lambda: view.render(initial), None, view.outputs, **quick).then(
            on_name, [recipe_box, repo_box, auto_name], [repo_box, auto_name], **quick
        )
        demo.load(on_user, None, user, **quick)
    demo.queue(default_concurrency_limit=1)
    return demo
