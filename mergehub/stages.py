"""Multi-stage recipes (mergekit-multi's YAML): several recipes in one file, later stages merging earlier outputs.

Each YAML document is a merge recipe; a document's `name:` names its output, and a later document uses
it by naming it as a model (`model: stage-one`, `base_model: stage-one`, `tokenizer_source: stage-one`).
The document without a `name:` is the final merge; without one, the final merge is the one stage no
other stage uses. As in mergekit-multi, names are unique and at most one document has no name.

Here, before any weight is read: the stages are put in dependency order (a cycle is an error naming
it), a reference that looks like a stage but names none is an error (a bare name, neither `org/name`
nor an existing directory), and a stage no later stage uses, other than the final one, is skipped
with a warning.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
import yaml

from mergehub import safe_yaml
from mergehub.errors import MergehubError, RecipeError, RecipeWarning, SourceError, listing
from mergehub.plan import Plan
from mergehub.recipe import ModelRef, Recipe, parse_recipe
from mergehub.sources.base import MadeHere, TensorInfo

__all__ = ["Stage", "MultiStage", "PlannedSource", "is_multi_stage", "parse_stages", "in_stage"]

E = TypeVar("E", bound=MergehubError)
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}$")


@dataclass(frozen=True)
class Stage:
    """One stage: its name (None for the unnamed final merge), its recipe, its first line, the stages it uses."""

    name: str | None
    recipe: Recipe
    text: str
    first_line: int
    needs: tuple[str, ...]

    @property
    def label(self) -> str:
        """How messages name the stage."""
        return f"stage `{self.name}`" if self.name else "the final stage"


@dataclass(frozen=True)
class MultiStage:
    """A multi-stage recipe: its stages in the order they run (the final one last), and what was skipped."""

    text: str
    stages: tuple[Stage, ...]
    warnings: tuple[RecipeWarning, ...] = ()

    @property
    def final(self) -> Stage:
        """The stage whose output is the result."""
        return self.stages[-1]

    @property
    def names(self) -> tuple[str, ...]:
        """The named stages that run, in order."""
        return tuple(s.name for s in self.stages if s.name)

    def stage(self, name: str) -> Stage:
        """The stage called `name`."""
        return next(s for s in self.stages if s.name == name)

    def last_use(self) -> dict[str, int]:
        """For each named stage, the index of the last stage that reads its output (after which it may be deleted)."""
        last: dict[str, int] = {}
        for index, stage in enumerate(self.stages):
            for name in stage.needs:
                last[name] = index
        return last


def is_multi_stage(text: str) -> bool:
    """Whether a recipe text holds several YAML documents (a multi-stage recipe).

    Raises:
        RecipeError: the text is too large or uses aliases.
    """
    try:
        return len(safe_yaml.load_documents(text)) > 1
    except yaml.YAMLError:
        return False


def in_stage(error: E, name: str | None, first_line: int) -> E:
    """The error of a stage's recipe, its lines moved to the file's numbering and its message naming the stage."""
    shift = first_line - 1
    if error.line is not None:
        error.line += shift
    error.problems = tuple(replace(p, line=p.line + shift) if p.line is not None else p for p in error.problems)
    if isinstance(error, RecipeError):
        error.warnings = tuple(replace(w, line=w.line + shift) if w.line is not None else w for w in error.warnings)
    label = f"Stage `{name}`" if name else "The final stage"
    if not error.headline.startswith(label):
        error.headline = f"{label}: {error.headline}"
        error.message = error.headline + listing(error.problems)
        error.args = (error.message,)
        if isinstance(error, OSError):
            error.strerror = error.message
    return error


def _references(recipe: Recipe) -> list[tuple[str, ModelRef | str]]:
    """Where the recipe names a model or tokenizer source, and the reference."""
    found: list[tuple[str, ModelRef | str]] = [("base_model", recipe.base_model)] if recipe.base_model else []
    for where, models, slices, _ in recipe.input_blocks():
        prefix = f"{where}." if where else ""
        found += [(f"{prefix}models[{i}].model", m.model) for i, m in enumerate(models or [])]
        for i, out_slice in enumerate(slices or []):
            if out_slice.base_model:
                found.append((f"{prefix}slices[{i}].base_model", out_slice.base_model))
            found += [(f"{prefix}slices[{i}].sources[{j}].model", s.model) for j, s in enumerate(out_slice.sources)]
    source = recipe.tokenizer.source if recipe.tokenizer else recipe.tokenizer_source
    if source is not None:
        found.append(("tokenizer.source" if recipe.tokenizer else "tokenizer_source", source))
    return found


def _needs(stage_recipe: Recipe, names: Sequence[str]) -> tuple[str, ...]:
    """The stages a recipe uses; a bare name that is no stage, no Hub repo and no directory is an error."""
    needs = []
    for location, ref in _references(stage_recipe):
        path = ref if isinstance(ref, str) else ref.path
        if path in names:
            if isinstance(ref, ModelRef) and ref.revision is not None:
                raise RecipeError(
                    f"{location}: `{ref}` pins a revision of stage `{path}`, whose output has none.",
                    hint=f"Write `{path}`.",
                    location=location,
                    line=stage_recipe.line_of(location),
                )
            needs.append(path)
        elif isinstance(ref, ModelRef) and "/" not in path and not ref.is_local and ref.revision is None:
            close = difflib.get_close_matches(path, names, n=1)
            raise RecipeError(
                f"{location}: `{path}` names no stage of this file and no local directory.",
                hint=(f"Did you mean stage `{close[0]}`? " if close else "")
                + f"Stages: {', '.join(names) or 'none named'}; Hub models are written `org/name`.",
                location=location,
                line=stage_recipe.line_of(location),
            )
    return tuple(dict.fromkeys(needs))


def _order(stages: Mapping[str | None, Stage], documents: Sequence[str | None]) -> list[str | None]:
    """The stages in dependency order, file order among equals.

    Raises:
        RecipeError: the stages use each other in a cycle.
    """
    order: list[str | None] = []
    state: dict[str | None, str] = {}

    def visit(name: str | None, path: list[str | None]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name) :] + [name]
            stage = stages[name]
            raise RecipeError(
                f"The stages use each other in a cycle: {' -> '.join(str(n) for n in cycle)}.",
                hint="A stage can only use stages that do not use it, directly or through others.",
                location="name",
                line=stage.first_line + (stage.recipe.line_of("name") or 1) - 1,
            )
        state[name] = "visiting"
        for need in stages[name].needs:
            visit(need, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in documents:
        visit(name, [])
    return order


def parse_stages(text: str) -> MultiStage:
    """Parse and check a multi-stage recipe: every stage's recipe, their references, their order.

    Raises:
        RecipeError: a stage's recipe is invalid, names are repeated or missing, a reference names no stage,
            the stages use each other in a cycle, or the final stage cannot be told.
    """
    try:
        documents = safe_yaml.load_documents(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise RecipeError(
            f"The recipe is not valid YAML: {e}",
            hint="Check indentation and quoting.",
            line=mark.line + 1 if mark is not None else None,
        ) from e
    named: dict[str | None, tuple[safe_yaml.Document, Recipe]] = {}
    for document in documents:
        data = document.data
        name = data.get("name") if isinstance(data, dict) else None
        where = f"document at line {document.first_line}"
        if name is not None and (not isinstance(name, str) or not _STAGE_NAME.match(name)):
            raise RecipeError(
                f"The {where} has `name: {name!r}`, which cannot name a stage.",
                hint="Use letters, digits, `-`, `_` and `.`.",
                location="name",
                line=document.first_line,
            )
        if name in named:
            what = f"Two stages are named `{name}`" if name else "Two documents have no `name:`"
            raise RecipeError(
                f"{what} (the second at line {document.first_line}).",
                hint="Name every stage once; only the final merge may go without a name.",
                line=document.first_line,
            )
        try:
            recipe = parse_recipe(document.text)
        except RecipeError as e:
            raise in_stage(e, name, document.first_line) from e
        named[name] = (document, recipe)
    names = [n for n in named if n is not None]
    stages: dict[str | None, Stage] = {}
    for name, (document, recipe) in named.items():
        try:
            needs = _needs(recipe, names)
        except RecipeError as e:
            raise in_stage(e, name, document.first_line) from e
        if name is not None and name in needs:
            raise in_stage(
                RecipeError(
                    "it uses its own output.", hint="A stage can only use other stages.", line=recipe.line_of("name")
                ),
                name,
                document.first_line,
            )
        stages[name] = Stage(name, recipe, document.text, document.first_line, needs)
    used = {need for stage in stages.values() for need in stage.needs}
    if None in stages:
        final: str | None = None
    else:
        sinks = [name for name in stages if name not in used]
        if len(sinks) != 1:
            raise RecipeError(
                f"No stage is the final merge: {', '.join(f'`{s}`' for s in sinks)} are used by no other stage.",
                hint="Leave the final stage without a `name:` (as mergekit-multi does), or remove the unused stages.",
            )
        final = sinks[0]
    order = _order(stages, [final])
    skipped = [name for name in stages if name not in order]
    warnings = tuple(
        RecipeWarning(
            "name",
            f"stage `{name}` is used by no stage leading to the final merge: skipped.",
            stages[name].first_line + (stages[name].recipe.line_of("name") or 1) - 1,
        )
        for name in skipped
    )
    return MultiStage(text, tuple(stages[name] for name in order), warnings)


class PlannedSource(MadeHere):
    """A stage's output before it exists, as a tensor source: its tensors and its files from the stage's plan.

    Planning a later stage against it checks names, shapes and dtypes from headers alone, as with any model;
    reading a tensor is a bug (the stage's output is read once it is written, from its directory).
    """

    def __init__(self, name: str, plan: Plan) -> None:
        self.label = f"stage `{name}`"
        self._files = plan.output_files()
        self._tensors = {
            slot.name: TensorInfo(slot.name, slot.dtype, slot.shape, shard.filename, slot.start, slot.end)
            for shard in plan.shards
            for slot in shard.slots
        }

    def tensors(self) -> Mapping[str, TensorInfo]:
        """The stage's output tensors, as its plan lays them out."""
        return self._tensors

    def config(self) -> dict:
        """The stage's output config.json."""
        return json.loads(self._files["config.json"])

    def read_file(self, filename: str) -> bytes | None:
        """A file the stage will write beside its weights (config, tokenizer, recipe)."""
        return self._files.get(filename)

    def read(self, name: str) -> torch.Tensor:
        """Not available before the stage runs."""
        raise SourceError(
            f"{self.label} has not been merged yet; {name} cannot be read.",
            hint="This is a bug in mergehub; please report it.",
        )
