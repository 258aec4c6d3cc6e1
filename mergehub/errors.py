"""Every mergehub exception, each carrying a hint that tells the user what to do next.

The tree::

    MergehubError
    ├── RecipeError (ValueError)          the YAML recipe is malformed or inconsistent (or, with strict, has warnings)
    │   └── UnknownMethodError            merge_method names no registered method
    ├── ModelReferenceError (ValueError)  a model reference cannot be resolved
    ├── SourceError (OSError)             a model's files cannot be read
    │   └── MissingTensorError (KeyError) a tensor the plan needs is absent
    ├── PlanError (ValueError)            models and recipe do not fit together
    │   └── AdapterError                  a LoRA adapter is of an unsupported kind, or does not fit its model
    ├── MergeMethodError (ValueError)     a kernel was given inputs it cannot merge
    ├── GateError (RuntimeError)          an MoE's router weights cannot be computed from the prompts
    ├── OutputError (OSError)             the output directory cannot be written
    ├── Cancelled (RuntimeError)          the merge was stopped on request
    ├── GGUFError (ValueError)            a model cannot be exported to GGUF (architecture, type, tokenizer)
    ├── EvaluationError (RuntimeError)    lm-eval is missing, or a model could not be evaluated
    │   └── UnknownTaskError (ValueError) an evaluation task is in no registry searched
    ├── PublishError (RuntimeError)       pushing to the Hub failed or is not allowed
    └── ExperimentError (RuntimeError)    a sweep or search cannot run (missing extra, Ray, checkpoint)

Every error may say where in the recipe its problem is: `location` is a document path such as
`models[1].parameters.density` and `line` its 1-based line in the recipe text; an error that gathers
several problems lists each in `problems`, with its own location. Interfaces annotate recipes from
these fields; the wording of a message is for people and is never parsed.

`remedy` names, for the few failures whose fix depends on the interface, what the user must do, so that each
interface can say it in its own terms (the CLI's hint names `--force`; the Space's names its checkbox):
`sign-in` (a token is missing, refused or not allowed to read the repo), `replace-repo` (the output repo exists
and was not made by mergehub), `strict` (strict mode turned warnings into this error).

Every error that is also an `OSError` carries its message in `strerror` too, so code that
formats `e.strerror` (as one does for an `OSError`) shows it instead of `None`.
`excerpt` is how an error quotes a user's value: never whole, at most a line's worth.

`Problem` is one located problem; `RecipeWarning` is not an exception either: it records something a recipe sets that
mergehub (like
mergekit) accepts but ignores, and where; `--strict` turns warnings into a `RecipeError` carrying them.

Nothing in mergehub is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Problem",
    "RecipeWarning",
    "MergehubError",
    "RecipeError",
    "UnknownMethodError",
    "ModelReferenceError",
    "SourceError",
    "MissingTensorError",
    "PlanError",
    "AdapterError",
    "MergeMethodError",
    "GateError",
    "OutputError",
    "PublishError",
    "Cancelled",
    "GGUFError",
    "EvaluationError",
    "UnknownTaskError",
    "excerpt",
    "ExperimentError",
    "listing",
    "Remedy",
]

Remedy = Literal["sign-in", "replace-repo", "strict"]
"""What the user must do about an error whose fix each interface words differently (see the module docstring)."""

EXCERPT_CHARS = 80
"""The most characters of a user's value (recipe text, a file name, a parameter) an error quotes."""


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """`repr(value)`, cut to at most `limit` characters with a note of how much was left out.

    Containers are cut before they are fully rendered, so a huge value costs no more than a short one.
    """
    text = _bounded_repr(value, limit + 1)
    if len(text) <= limit:
        return text
    size = (
        f"{len(value):,} items"
        if isinstance(value, (list, tuple, dict, set))
        else f"{len(str(value)):,} chars"
        if isinstance(value, (str, bytes))
        else "more"
    )
    return f"{text[: limit - 1]}… ({size})"


def _bounded_repr(value: object, budget: int) -> str:
    """At least `budget` characters of `repr(value)` (or all of it), without rendering huge containers whole."""
    if isinstance(value, (str, bytes)):
        return repr(value[:budget])
    if isinstance(value, (list, tuple, set, dict)):
        items = value.items() if isinstance(value, dict) else value
        open_, close = {dict: "{}", list: "[]", tuple: "()", set: "{}"}.get(type(value), "[]")
        parts: list[str] = []
        used = 1
        for item in items:
            if used > budget:
                break
            part = (
                f"{_bounded_repr(item[0], budget)}: {_bounded_repr(item[1], budget)}"
                if isinstance(value, dict)
                else _bounded_repr(item, budget)
            )
            parts.append(part)
            used += len(part) + 2
        return open_ + ", ".join(parts) + close
    return repr(value)[:budget]


@dataclass(frozen=True)
class Problem:
    """One problem and where it is: `location` is a document path such as `models[1].parameters.density`
    ("" when it concerns no one place), `line` its 1-based line in the recipe text when the recipe came from text.

    Interfaces render these fields; the wording of `message` is for people only.
    """

    location: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.location + (f" (line {self.line})" if self.line else "")
        return f"{where}: {self.message}" if where else self.message


@dataclass(frozen=True)
class RecipeWarning(Problem):
    """Something a recipe sets that is accepted but ignored (as mergekit ignores it), and where it is."""


MAX_LISTED = 20
"""The most problems or warnings a message lists (the error object holds them all)."""


def listing(items: tuple[object, ...]) -> str:
    """Items as indented lines under a headline, at most `MAX_LISTED` of them and a count of the rest."""
    shown = [f"\n  {item}" for item in items[:MAX_LISTED]]
    more = len(items) - MAX_LISTED
    return "".join(shown) + (f"\n  ... and {more} more" if more > 0 else "")


class MergehubError(Exception):
    """Base of every mergehub error; `hint` says what the user can do about it.

    `location` and `line` say where in the recipe the problem is, when it is one place. An error that
    gathers several problems has them in `problems`, each located; its `headline` is the message
    without their listing. `remedy` names the fix when interfaces word it differently.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        location: str | None = None,
        line: int | None = None,
        problems: tuple[Problem, ...] = (),
        remedy: Remedy | None = None,
    ) -> None:
        self.headline = message
        self.remedy = remedy
        message += listing(problems)
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.location = location
        self.line = line
        self.problems = problems
        if isinstance(self, OSError):
            self.strerror = message  # else `e.strerror` is None, and a wrapper would print "None"

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"

    def where(self) -> str | None:
        """Where the problem is in the recipe, for people: `line 7 (models[1].model)`; None when it is not one line."""
        if self.line is None:
            return None
        return f"line {self.line}" + (f" ({self.location})" if self.location else "")


class RecipeError(MergehubError, ValueError):
    """The recipe YAML is malformed, has unknown keys, or has invalid values.

    `warnings` holds the warnings that `--strict` turned into this error.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        location: str | None = None,
        line: int | None = None,
        problems: tuple[Problem, ...] = (),
        warnings: tuple[RecipeWarning, ...] = (),
        remedy: Remedy | None = None,
    ) -> None:
        super().__init__(message, hint=hint, location=location, line=line, problems=problems, remedy=remedy)
        self.warnings = warnings


class UnknownMethodError(RecipeError):
    """`merge_method` names a method mergehub does not know."""


class ModelReferenceError(MergehubError, ValueError):
    """A model reference is neither an existing local directory nor a valid Hub ID."""


class SourceError(MergehubError, OSError):
    """A model's weights or config could not be read."""


class MissingTensorError(SourceError, KeyError):
    """A tensor the plan needs is absent from a model."""

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return MergehubError.__str__(self)


class PlanError(MergehubError, ValueError):
    """The models and the recipe do not fit together (shapes, layers, architectures)."""


class AdapterError(PlanError):
    """A LoRA adapter cannot be applied: an adapter type or option mergehub does not apply, or weights that do not fit
    the model (modules it lacks, shapes that differ)."""


class MergeMethodError(MergehubError, ValueError):
    """A merge kernel was given inputs or parameters it cannot merge."""


class GateError(MergehubError, RuntimeError):
    """An MoE's router weights cannot be computed: the base's tokenizer or its forward pass with transformers failed."""


class OutputError(MergehubError, OSError):
    """The output could not be written."""


class PublishError(MergehubError, RuntimeError):
    """Pushing the merged model to the Hub failed or is not allowed."""


class Cancelled(MergehubError, RuntimeError):
    """The merge was stopped on request before it finished; nothing was kept."""


class GGUFError(MergehubError, ValueError):
    """A model cannot be exported to GGUF: its architecture, a requested type, its tokenizer, or no `gguf` package."""


class EvaluationError(MergehubError, RuntimeError):
    """lm-eval is missing, or a model could not be evaluated."""


class UnknownTaskError(EvaluationError, ValueError):
    """A task name is in no registry searched and is not a task YAML file."""


class ExperimentError(MergehubError, RuntimeError):
    """A sweep or an evolutionary search cannot run: a missing extra, an unreachable Ray cluster, a bad checkpoint."""
