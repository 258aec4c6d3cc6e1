"""mergehub: merge language models from mergekit recipes, streaming tensor by tensor.

The pipeline, one step per module (imports point down it; `tests/test_imports.py` checks):

- `recipe`: mergekit YAML → a validated `Recipe` (warnings for what is ignored, with lines);
- `sources`: `open_sources` opens each model once, keyed by `ModelRef`: headers, configs, small files, tensors;
- `plan`: `plan_merge(recipe, sources)` → the whole merge as a `Plan` (jobs, shards, vocabulary, files to
  write, pinned parents, warnings), checked before any weight is read; it round-trips through JSON;
- `methods`: the merge kernels, declared with their parameter specs, by mergekit name;
- `executor`: walks the plan tensor by tensor, reading ahead and merging with `methods`;
- `writer`: the safetensors shards (and `gguf` the GGUF files) as tensors arrive; `output` stages and swaps;
- `publish`: the model card, lineage and push to the Hub; `evaluation` scores with lm-eval;
- `api`: the public surface strings these together; `experiments`: sweeps and searches over many merges;
  `interfaces`: the CLI, the Space and the Action.

`errors` holds every exception (each with a hint, and where in the recipe it is); this module
re-exports the public surface, pinned by `__all__`: the errors at once, the rest on first use.
"""

from mergehub.errors import (
    AdapterError,
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

_LAZY = {
    **dict.fromkeys(
        (
            "ExtractionResult",
            "ExtractOptions",
            "extract_lora",
            "plan_extraction",
            "push_extraction",
            "MergeResult",
            "PushResult",
            "load_recipe",
            "open_sources",
            "parse_recipe",
            "plan_merge",
            "push_merge",
            "run_merge",
        ),
        "mergehub.api",
    ),
    "Progress": "mergehub.executor",
    "Plan": "mergehub.plan",
    "Sources": "mergehub.sources",
}
"""Names imported on first use, so `mergehub --help` does not load torch."""


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'mergehub' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AdapterError",
    "Cancelled",
    "GGUFError",
    "MergehubError",
    "MergeMethodError",
    "MissingTensorError",
    "ModelReferenceError",
    "OutputError",
    "PlanError",
    "PublishError",
    "RecipeError",
    "SourceError",
    "UnknownMethodError",
    *_LAZY,
]
