"""What a recipe written by someone we do not trust may ask for: Hub references only, and bounded size and counts.

The Space applies these rules to its visitors' recipes (`space.safety.SPACE_LIMITS`), the Action to the
recipes of pull requests (`PULL_REQUEST_LIMITS`, the same numbers). Each rule is pure: no network, and no
file system except `refuse_local_shadows` and `check_local_reference`, which look for directories.
YAML anchors and aliases are refused by `safe_yaml`, wherever a recipe is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergehub.api import parse_document
from mergehub.errors import MergehubError, ModelReferenceError, RecipeError
from mergehub.extraction import ExtractionSpec, parse_extraction
from mergehub.moe.config import MoEConfig
from mergehub.recipe import ModelRef, Recipe, is_hub_id, parse_recipe
from mergehub.stages import MultiStage, in_stage

__all__ = [
    "Limits",
    "PULL_REQUEST_LIMITS",
    "check_hub_reference",
    "check_model_reference",
    "check_local_reference",
    "check_counts",
    "check_size",
    "check_untrusted_recipe",
    "check_pull_request_extraction",
    "check_pull_request_recipe",
    "recipe_references",
    "refuse_local_shadows",
    "tokenizer_references",
]


@dataclass(frozen=True)
class Limits:
    """The caps on one untrusted recipe, and where they apply (for the messages: "on this Space")."""

    where: str
    max_recipe_bytes: int = 20_000
    max_models: int = 8
    max_slices: int = 64


PULL_REQUEST_LIMITS = Limits("in pull requests")
"""The Action's caps on a pull request's recipes: the Space's numbers."""

_REVISION = re.compile(r"^[\w.\-/]{1,128}$", re.ASCII)


def check_hub_reference(text: str) -> str:
    """Return `text` stripped if it is a Hub model reference, `org/name` or `org/name@revision`.

    Local paths, `..`, absolute paths, `~`, URLs and `file:` references are refused, so a recipe can
    only ever read Hub repos (public ones, or those the token in use can read).

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


def check_model_reference(text: str) -> str:
    """Return `text` stripped if it is a Hub model reference, or a Hub model with a Hub LoRA adapter (`model+adapter`).

    Raises:
        ModelReferenceError: a part is not a Hub reference (see `check_hub_reference`).
    """
    return "+".join(check_hub_reference(part) for part in (text or "").split("+", 1))


def _parts(refs: Sequence[ModelRef]) -> list[tuple[ModelRef, ModelRef]]:
    """Each reference with each model it reads: itself, or for `model+adapter` the model and the adapter."""
    return [(ref, part) for ref in refs for part in (ref.model, ref.adapter) if part is not None]


def check_local_reference(ref: ModelRef, root: Path) -> None:
    """Accept a local model only as a directory inside `root` (the checkout), relative to it; a Hub ID must be one.

    Raises:
        ModelReferenceError: a path outside `root` or not a directory, or a malformed Hub ID.
    """
    inside = (root / ref.path).resolve()
    if not inside.is_dir():
        check_hub_reference(str(ref))
        return
    if inside != root.resolve() and root.resolve() not in inside.parents:
        raise ModelReferenceError(
            f"Model {ref.path[:80]!r} is outside the checkout.",
            hint="Local models must be directories of this repository; or use a Hub model ID.",
        )


def refuse_local_shadows(refs: Sequence[ModelRef], root: Path = Path(".")) -> None:
    """Refuse references that also name a file or directory under `root`: mergehub would read it, not the Hub.

    Raises:
        ModelReferenceError: the first such reference.
    """
    for ref, part in _parts(refs):
        if (root / part.path).exists():
            raise ModelReferenceError(  # says no more: which paths exist on a server is not the visitor's business
                f"Model {str(ref)!r} is not allowed here.", hint="Use another Hub model ID."
            )


def tokenizer_references(recipe: Recipe) -> list[str]:
    """Model references hidden in the tokenizer settings (`tokenizer_source`, `tokenizer:`), as written."""
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


def recipe_references(recipe: Recipe | MoEConfig) -> list[ModelRef]:
    """Every model a merge recipe reads: its models (base first), then those its tokenizer settings name (an MoE
    config: its base and experts).

    Raises:
        RecipeError: a tokenizer setting names a malformed reference.
    """
    refs = list(recipe.referenced_models())
    if isinstance(recipe, MoEConfig):
        return refs
    for text in tokenizer_references(recipe):
        ref = ModelRef.parse(text)
        if ref not in refs:
            refs.append(ref)
    return refs


def check_size(text: str, limits: Limits) -> None:
    """Refuse a recipe text larger than the limits allow, before it is parsed.

    Raises:
        RecipeError: the text is too large.
    """
    size = len(text.encode("utf-8"))
    if size > limits.max_recipe_bytes:
        raise RecipeError(
            f"The recipe is {size:,} bytes; at most {limits.max_recipe_bytes:,} are allowed {limits.where}.",
            hint="Shorten it, or run `mergehub merge` on your own machine for larger recipes.",
        )


def check_counts(refs: Sequence[ModelRef], slices: int, limits: Limits) -> None:
    """Refuse more models or slices than the limits allow.

    Raises:
        RecipeError: too many models or slices.
    """
    if len(refs) > limits.max_models:
        raise RecipeError(
            f"The recipe names {len(refs)} models; at most {limits.max_models} are allowed {limits.where}.",
            hint="Merge in stages: merge some models first, then merge the result with the others.",
        )
    if slices > limits.max_slices:
        raise RecipeError(
            f"The recipe has {slices} slices; at most {limits.max_slices} are allowed {limits.where}.",
            hint="Use fewer, longer layer ranges.",
        )


def check_untrusted_recipe(text: str, limits: Limits) -> Recipe:
    """Parse an untrusted recipe and enforce the limits: size, model and slice counts, Hub references only.

    Raises:
        RecipeError: too large, too many models or slices, YAML aliases, or an invalid recipe.
        ModelReferenceError: a model reference is not a Hub ID.
    """
    check_size(text, limits)
    recipe = parse_recipe(text)  # refuses YAML aliases
    refs = recipe_references(recipe)
    check_counts(refs, sum(len(block[2] or []) for block in recipe.input_blocks()), limits)
    for ref, part in _parts(refs):  # a LoRA reference `model+adapter`: both on the Hub
        try:
            check_hub_reference(str(part))
        except ModelReferenceError as e:  # said with its place in the recipe
            where = recipe.location_of(ref) or ("tokenizer.source" if recipe.tokenizer else "tokenizer_source")
            raise recipe.locate(e, where) from None
    return recipe


def check_pull_request_recipe(text: str, root: Path, *, allow_local: bool = False) -> Recipe | MoEConfig | MultiStage:
    """The Action's rules for a pull request's recipe (a merge recipe, a mergekit-moe config, or a multi-stage
    recipe, each stage checked): the Space's limits, and Hub references only (no file or directory of the
    checkout `root` may shadow one), unless `allow_local` accepts directories inside `root`.

    Raises:
        RecipeError: too large, too many models or slices, YAML aliases, or an invalid recipe.
        ModelReferenceError: a reference that is not a Hub ID (or, with `allow_local`, a path outside `root`),
            located at its line (and stage).
    """
    check_size(text, PULL_REQUEST_LIMITS)
    document = parse_document(text)  # refuses YAML aliases
    if not isinstance(document, MultiStage):
        _check_pull_request_document(document, root, allow_local)
        return document
    for stage in document.stages:
        try:
            _check_pull_request_document(stage.recipe, root, allow_local, stages=document.names)
        except MergehubError as e:
            raise in_stage(e, stage.name, stage.first_line) from e
    return document


def check_pull_request_extraction(text: str, root: Path, *, allow_local: bool = False) -> ExtractionSpec:
    """The same rules for a pull request's extraction file (`extract_lora:`): its size, and its base and fine-tune
    (each side of a `model+adapter` too) on the Hub, unless `allow_local` accepts directories inside `root`.

    Raises:
        RecipeError: too large, YAML aliases, or an invalid extraction file.
        ModelReferenceError: as for recipes, located at its line.
    """
    check_size(text, PULL_REQUEST_LIMITS)
    spec = parse_extraction(text)
    _check_pull_request_references(spec, [spec.base, spec.model], root, allow_local)
    return spec


def _check_pull_request_document(
    recipe: Recipe | MoEConfig, root: Path, allow_local: bool, stages: Sequence[str] = ()
) -> None:
    """A recipe's (or a stage's, or an MoE config's) model and slice counts and references; `stages`: the names
    of earlier stages, whose outputs are no models to check."""
    refs = [ref for ref in recipe_references(recipe) if ref.path not in stages]
    slices = 0 if isinstance(recipe, MoEConfig) else sum(len(block[2] or []) for block in recipe.input_blocks())
    check_counts(refs, slices, PULL_REQUEST_LIMITS)
    _check_pull_request_references(recipe, refs, root, allow_local)


def _check_pull_request_references(
    recipe: Recipe | MoEConfig | ExtractionSpec, refs: Sequence[ModelRef], root: Path, allow_local: bool
) -> None:
    """Hub references only (each side of `model+adapter`), or with `allow_local` directories inside `root`."""
    for ref, part in _parts(refs):
        try:
            if allow_local:
                check_local_reference(part, root)
            else:
                check_hub_reference(str(part))
                refuse_local_shadows([part], root)
        except ModelReferenceError as e:
            e.hint = f"{e.hint} Pull requests may name local models only if the workflow sets `allow-local-models`."
            if isinstance(recipe, (Recipe, MoEConfig)):  # an extraction file's two references need no line
                tokenizer = "tokenizer.source" if getattr(recipe, "tokenizer", None) else "tokenizer_source"
                recipe.locate(e, recipe.location_of(ref) or tokenizer)
            raise
