"""Every mergehub exception, each carrying a hint that tells the user what to do next.

The tree::

    MergehubError
    ├── RecipeError (ValueError)          the YAML recipe is malformed or inconsistent
    │   └── UnknownMethodError            merge_method names no registered method
    ├── ModelReferenceError (ValueError)  a model reference cannot be resolved
    ├── SourceError (OSError)             a model's files cannot be read
    │   └── MissingTensorError (KeyError) a tensor the plan needs is absent
    ├── PlanError (ValueError)            models and recipe do not fit together
    ├── MergeMethodError (ValueError)     a kernel was given inputs it cannot merge
    ├── OutputError (OSError)             the output directory cannot be written
    ├── Cancelled (RuntimeError)          the merge was stopped on request
    ├── GGUFError (ValueError)            a model cannot be exported to GGUF (architecture, type, tokenizer)
    ├── EvaluationError (RuntimeError)    lm-eval is missing, or a model could not be evaluated
    │   └── UnknownTaskError (ValueError) an evaluation task is in no registry searched
    └── PublishError (RuntimeError)       pushing to the Hub failed or is not allowed

Nothing in mergehub is imported here.
"""

from __future__ import annotations

__all__ = [
    "MergehubError",
    "RecipeError",
    "UnknownMethodError",
    "ModelReferenceError",
    "SourceError",
    "MissingTensorError",
    "PlanError",
    "MergeMethodError",
    "OutputError",
    "PublishError",
    "Cancelled",
    "GGUFError",
    "EvaluationError",
    "UnknownTaskError",
]


class MergehubError(Exception):
    """Base of every mergehub error; `hint` says what the user can do about it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


class RecipeError(MergehubError, ValueError):
    """The recipe YAML is malformed, has unknown keys, or has invalid values."""


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

    def __init__(self, message: str, *, hint: str | None = None, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems


class MergeMethodError(MergehubError, ValueError):
    """A merge kernel was given inputs or parameters it cannot merge."""


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
