"""The Gradio Space: sign in with Hugging Face, build a recipe from a form or YAML, merge, and push.

One job per module; imports point down this list, and only `page`, `view` and `moe_tab` need gradio (the `space` extra):

- `page`: the `gr.Blocks` layout and its event wiring (`build_app`);
- `view`: the form's gradio components and the maps between them and a `Form`;
- `extract`: the Extract LoRA tab's jobs (`extract`, `extraction_dry_run`);
- `job`: the merge job (`merge`) and what jobs share (`run_job`): progress, Cancel, the ZeroGPU wrapper;
- `moe_tab`: the MoE tab's components and handlers (`build_moe_tab`);
- `moe_form`: the MoE tab's form and the mergekit-moe config it makes (`moe_yaml`);
- `lookups`: the dry run, the Hub model search and lineage;
- `compat`: the compatibility table, from configs and safetensors headers;
- `presets`: the preset recipes and the default output repo name;
- `form`: the form <-> recipe YAML mapping (`Form`, `form_to_yaml`, `yaml_to_form`);
- `safety`: what a visitor may ask for (Hub references, limits, repo names) and see (`scrub`, `user_message`).

Counts, sizes and durations are formatted by `mergehub.units`, as everywhere else.
"""

from mergehub.interfaces.space.compat import ModelSummary, check_models, compatibility_markdown, summarize_model
from mergehub.interfaces.space.extract import extract, extraction_dry_run, extraction_spec
from mergehub.interfaces.space.form import Form, SharedValue, form_to_yaml, form_with_method, parse_value, yaml_to_form
from mergehub.interfaces.space.job import Session, estimate_gpu_seconds, merge
from mergehub.interfaces.space.lookups import dry_run, lineage_markdown, search_models
from mergehub.interfaces.space.page import build_app
from mergehub.interfaces.space.presets import PRESETS, default_repo_name, preset_form
from mergehub.interfaces.space.safety import (
    MAX_MODELS,
    MAX_RECIPE_BYTES,
    MAX_SLICES,
    check_hub_reference,
    check_model_reference,
    check_recipe_text,
    check_repo_name,
    scrub,
    user_message,
)

__all__ = [
    "MAX_MODELS",
    "MAX_RECIPE_BYTES",
    "MAX_SLICES",
    "PRESETS",
    "Form",
    "ModelSummary",
    "Session",
    "SharedValue",
    "build_app",
    "check_hub_reference",
    "check_model_reference",
    "check_models",
    "check_recipe_text",
    "check_repo_name",
    "compatibility_markdown",
    "default_repo_name",
    "dry_run",
    "estimate_gpu_seconds",
    "extract",
    "extraction_dry_run",
    "extraction_spec",
    "form_to_yaml",
    "form_with_method",
    "lineage_markdown",
    "merge",
    "parse_value",
    "preset_form",
    "scrub",
    "search_models",
    "summarize_model",
    "user_message",
    "yaml_to_form",
]
