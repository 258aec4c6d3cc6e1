"""What a visitor may ask the server to do, and see: Hub-only references, limits, scrubbed messages.

The visitor's OAuth token goes only to mergehub and huggingface_hub calls: it is never logged,
stored beyond the request, shown, or left in an error message. Without a sign-in, reads are
anonymous (`token=False`), so the Space never lends its own credentials to a visitor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergehub.errors import MergehubError, ModelReferenceError, PublishError, RecipeError
from mergehub.interfaces.secrets import scrub_tokens
from mergehub.recipe import Recipe, is_hub_id, parse_recipe

MAX_RECIPE_BYTES = 20_000
"""The largest recipe the Space accepts, in UTF-8 bytes."""
MAX_MODELS = 8
"""The most distinct models one recipe may reference."""
MAX_SLICES = 64
"""The most `slices:` entries one recipe may have."""
MAX_MERGE_BYTES = 400 * 10**9
"""The most bytes one merge may read and write together (eight 20B models in bfloat16 and their merge fit)."""

# -- references and recipes -----------------------------------------------------------------------

_REVISION = re.compile(r"^[\w.\-/]{1,128}$", re.ASCII)


def check_hub_reference(text: str) -> str:
    """Return `text` stripped if it is a Hub model reference, `org/name` or `org/name@revision`.

    Pure: no file system, no network. Local paths, `..`, absolute paths, `~`, URLs and `file:`
    references are refused, so a recipe can only ever read public Hub repos (or those the
    visitor's own token can read).

    Raises:
        ModelReferenceError: anything else.
    """
    value = text.strip() if isinstance(text, str) else ""
    hint = "Use a Hub model ID like `org/name`, or `org/name@revision` for a branch, tag or commit."
    if not value:
        raise ModelReferenceError("A model reference is empty.", hint=hint)
    shown = value if len(value) <= 80 else value[:77] + "..."
    reasons = []
    if value.startswith(("/", "~", ".", "\\")):
        reasons.append("it looks like a path on the server")
    if ".." in value:
        reasons.append("it contains `..`")
    if ":" in value or "\\" in value:
        reasons.append("it looks like a URL or a file path")
    if any(c.isspace() for c in value) or not value.isprintable():
        reasons.append("it contains spaces or control characters")
    if not reasons:
        path, at, revision = value.partition("@")
        if not is_hub_id(path, namespaced=True):
            reasons.append("it is not of the form `org/name`")
        elif at and (not _REVISION.match(revision) or revision.startswith(("/", ".")) or revision.endswith("/")):
            reasons.append("its revision is malformed")
    if reasons:
        raise ModelReferenceError(f"Model {shown!r} is not allowed here: {'; '.join(reasons)}.", hint=hint)
    return value


def _tokenizer_references(recipe: Recipe) -> list[str]:
    """Model references hidden in the tokenizer settings (`tokenizer_source`, `tokenizer:`)."""
    found: list[str] = []
    sources = [recipe.tokenizer_source, recipe.tokenizer.source if recipe.tokenizer else None]
    for source in sources:
        if source and source not in ("base", "union"):
            found.append(source.removeprefix("model:"))

    def walk(node: Any, key: str | None = None) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and key == "model":
            found.append(node)

    if recipe.tokenizer and recipe.tokenizer.tokens:
        walk(recipe.tokenizer.tokens)
    return found


def check_recipe_text(text: str) -> Recipe:
    """Parse a visitor's recipe and enforce the Space's limits: size, model count, Hub references only.

    Raises:
        RecipeError: too large, too many models or slices, YAML aliases (refused by `parse_recipe`), or an invalid
        recipe.
        ModelReferenceError: a model reference is not a Hub ID.
    """
    size = len(text.encode("utf-8"))
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"The recipe is {size:,} bytes; this Space accepts at most {MAX_RECIPE_BYTES:,}.",
            hint="Shorten it, or run `mergehub merge` on your own machine for larger recipes.",
        )
    recipe = parse_recipe(text)  # refuses YAML aliases
    refs = recipe.referenced_models()
    if len(refs) > MAX_MODELS:
        raise RecipeError(
            f"The recipe names {len(refs)} models; this Space merges at most {MAX_MODELS}.",
            hint="Merge in stages: merge some models first, then merge the result with the others.",
        )
    slices = sum(len(block[2] or []) for block in recipe.input_blocks())
    if slices > MAX_SLICES:
        raise RecipeError(
            f"The recipe has {slices} slices; this Space allows at most {MAX_SLICES}.",
            hint="Use fewer, longer layer ranges.",
        )
    for ref in refs:
        check_hub_reference(str(ref))
    for ref in _tokenizer_references(recipe):
        check_hub_reference(ref)
    return recipe


def refuse_local_shadows(recipe: Recipe) -> None:
    """Refuse references that also name a folder on the server: mergehub would read the folder."""
    for ref in recipe.referenced_models():
        if Path(ref.path).exists():
            raise ModelReferenceError(f"Model {str(ref)!r} is not allowed here.", hint="Use another Hub model ID.")


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


def user_message(error: BaseException, secrets: Sequence[str | bool | None] = ()) -> str:
    """What the page shows for an error: mergehub's message, where it is in the recipe, and hint, scrubbed; nothing
    else leaks."""
    if isinstance(error, MergehubError):
        where = error.where()
        text = (
            error.message
            + (f"\nAt {where} of the recipe." if where else "")
            + (f"\nHint: {error.hint}" if error.hint else "")
        )
    else:
        text = f"The server failed unexpectedly ({type(error).__name__}). Try again; if it keeps failing, report it."
    return scrub(text, secrets)
