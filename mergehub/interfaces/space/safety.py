"""What a visitor may ask the server to do, and see: Hub-only references, limits, scrubbed messages.

The visitor's OAuth token goes only to mergehub and huggingface_hub calls: it is never logged,
stored beyond the request, shown, or left in an error message. Without a sign-in, reads are
anonymous (`token=False`), so the Space never lends its own credentials to a visitor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mergehub.errors import MergehubError, PublishError
from mergehub.interfaces.secrets import scrub_tokens
from mergehub.interfaces.untrusted import (
    Limits,
    check_counts,
    check_hub_reference,
    check_model_reference,
    check_size,
    check_untrusted_recipe,
)
from mergehub.interfaces.untrusted import refuse_local_shadows as refuse_folder_shadows
from mergehub.moe.config import MoEConfig, is_moe_text, parse_moe_config
from mergehub.recipe import Recipe, is_hub_id

__all__ = [
    "SPACE_LIMITS",
    "MAX_RECIPE_BYTES",
    "MAX_MODELS",
    "MAX_SLICES",
    "MAX_MERGE_BYTES",
    "check_hub_reference",
    "check_model_reference",
    "check_recipe_text",
    "check_moe_text",
    "check_document_text",
    "refuse_local_shadows",
    "check_repo_name",
    "read_token",
    "scrub",
    "user_message",
]

SPACE_LIMITS = Limits("on this Space")
"""The caps on a visitor's recipe (the same numbers as the Action's pull-request checks)."""
MAX_RECIPE_BYTES = SPACE_LIMITS.max_recipe_bytes
"""The largest recipe the Space accepts, in UTF-8 bytes."""
MAX_MODELS = SPACE_LIMITS.max_models
"""The most distinct models one recipe may reference."""
MAX_SLICES = SPACE_LIMITS.max_slices
"""The most `slices:` entries one recipe may have."""
MAX_MERGE_BYTES = 400 * 10**9
"""The most bytes one merge may read and write together (eight 20B models in bfloat16 and their merge fit)."""

# -- references and recipes (the rules are in `interfaces.untrusted`, shared with the Action) -----


def check_recipe_text(text: str) -> Recipe:
    """Parse a visitor's recipe and enforce the Space's limits: size, model count, Hub references only.

    Raises:
        RecipeError: too large, too many models or slices, YAML aliases (refused by `parse_recipe`), or an invalid
        recipe.
        ModelReferenceError: a model reference is not a Hub ID.
    """
    return check_untrusted_recipe(text, SPACE_LIMITS)


def check_moe_text(text: str) -> MoEConfig:
    """Parse a visitor's mergekit-moe config and enforce the Space's limits: size, model count (the base and the
    experts), Hub references only, and mergekit-moe's rules (prompts where the gate mode needs them...).

    Raises:
        RecipeError: too large, too many models, YAML aliases, or an invalid config.
        ModelReferenceError: a model reference is not a Hub ID.
    """
    check_size(text, SPACE_LIMITS)
    config = parse_moe_config(text)  # refuses YAML aliases
    refs = config.referenced_models()
    check_counts(refs, 0, SPACE_LIMITS)
    for ref in refs:
        check_hub_reference(str(ref))
    config.check()
    return config


def check_document_text(text: str) -> Recipe | MoEConfig:
    """A visitor's merge recipe or mergekit-moe config (`experts:` without `merge_method:`), checked as each is."""
    return check_moe_text(text) if is_moe_text(text) else check_recipe_text(text)


def refuse_local_shadows(recipe: Recipe | MoEConfig) -> None:
    """Refuse references that also name a folder on the server: mergehub would read the folder."""
    refuse_folder_shadows(recipe.referenced_models())


def check_repo_name(text: str) -> str:
    """Return the output repo, `name` (in the visitor's namespace) or `namespace/name`, if well formed.

    Raises:
        PublishError: the name is empty or not a valid Hub repo name.
    """
    value = (text or "").strip()
    if not is_hub_id(value):
        raise PublishError(
            f"{value[:80]!r} is not a valid repo name." if value else "The output repo name is empty.",
            hint="Use letters, digits, `-`, `_` and `.` (at most 96), like `my-merge` or `you/my-merge`.",
        )
    return value


def read_token(oauth_token: Any) -> str | bool:
    """The visitor's token, or False: never fall back to the Space's own credentials."""
    token = getattr(oauth_token, "token", None)
    return token if isinstance(token, str) and token else False


# -- what a visitor may see -----------------------------------------------------------------------

_FILE_URL = re.compile(r"\bfile:\S+")
_HOME_PATH = re.compile(r"(?<![\w/])~/\S*")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~\-])/(?:[\w.\-+@%=~]+/?)+")
_PATH_SHOWN = "<server path>"


def scrub(text: str, secrets: Sequence[str | bool | None] = ()) -> str:
    """Remove what a visitor must never see: tokens (`hf_...`, the session's own) and server paths."""
    text = scrub_tokens(text, secrets)
    text = _FILE_URL.sub(_PATH_SHOWN, text)
    text = _HOME_PATH.sub(_PATH_SHOWN, text)
    return _ABSOLUTE_PATH.sub(_PATH_SHOWN, text)


PAGE_HINTS: Mapping[str, str] = {
    "sign-in": "Sign in with Hugging Face (top right) with an account that may read this repo; for a gated model, "
    "accept its conditions on its Hub page first.",
    "replace-repo": "Choose another name, or tick “Replace an existing repo I own” to add this merge to it.",
    "strict": "Untick “Strict” to merge anyway (the card records what was ignored), or fix what the warnings name.",
}
"""The page's words for an error's `remedy` (the CLI's hints name flags and commands a visitor cannot use)."""


def user_message(error: BaseException, secrets: Sequence[str | bool | None] = ()) -> str:
    """What the page shows for an error, as plain text: mergehub's message, where it is in the recipe, and the hint
    in the page's words, scrubbed; nothing else leaks."""
    if isinstance(error, MergehubError):
        where = error.where()
        hint = PAGE_HINTS.get(error.remedy or "", error.hint)
        text = error.message + (f"\nAt {where} of the recipe." if where else "") + (f"\nHint: {hint}" if hint else "")
    else:
        text = f"The server failed unexpectedly ({type(error).__name__}). Try again; if it keeps failing, report it."
    return scrub(text, secrets)
