"""mergehub: merge language models from mergekit recipes, streaming tensor by tensor."""

from mergehub.api import MergeResult, PushResult, load_recipe, open_sources, parse_recipe, plan_merge, push_merge, run_merge
from mergehub.errors import (
    Cancelled,
    GGUFError,
    MergehubError,
    MergeMethodError,
    MissingTensorError,
    ModelReferenceError,
    OutputError,
    PlanError,
    PublishError,
    RecipeError,
    SourceError,
    UnknownMethodError,
)
from mergehub.executor import Progress
from mergehub.plan import Plan

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "GGUFError",
    "MergeResult",
    "MergehubError",
    "MergeMethodError",
    "MissingTensorError",
    "ModelReferenceError",
    "OutputError",
    "Plan",
    "PlanError",
    "Progress",
    "PublishError",
    "PushResult",
    "RecipeError",
    "SourceError",
    "UnknownMethodError",
    "load_recipe",
    "open_sources",
    "parse_recipe",
    "plan_merge",
    "push_merge",
    "run_merge",
]
