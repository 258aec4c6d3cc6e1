"""The TIES family: task arithmetic and the methods that sparsify, sign-elect and merge task vectors.

Each member is a configuration of one pipeline (_ties_pipeline.py): its sparsifier, whether
signs are elected, and its weighting with the defaults of `normalize` and `rescale`.
"""

from __future__ import annotations

from mergehub.methods._ties_pipeline import (
    BREADCRUMBS,
    KEEP_ALL,
    MAGNITUDE,
    MAGPRUNE,
    RANDOM,
    VARIANCE,
    EnergyWeights,
    RecipeWeights,
    task_vector_method,
)

__all__ = ["SPECS"]

SPECS = (
    task_vector_method(
        "task_arithmetic",
        sparsify=KEEP_ALL,
        consensus=False,
        weighting=RecipeWeights(normalize=False, rescale=False),
        summary="Adds the weighted task vectors (model - base) of each model to the base.",
        paper="https://arxiv.org/abs/2212.04089",
    ),
    task_vector_method(
        "ties",
        sparsify=MAGNITUDE,
        consensus=True,
        weighting=RecipeWeights(normalize=True, rescale=False),
        summary="Trims each task vector to its largest entries, elects signs, and averages the agreeing entries.",
        paper="https://arxiv.org/abs/2306.01708",
    ),
    task_vector_method(
        "dare_ties",
        sparsify=RANDOM,
        consensus=True,
        weighting=RecipeWeights(normalize=False, rescale=True),
        summary="Randomly drops task-vector entries and rescales, then merges with TIES sign election.",
        paper="https://arxiv.org/abs/2311.03099",
    ),
    task_vector_method(
        "dare_linear",
        sparsify=RANDOM,
        consensus=False,
        weighting=RecipeWeights(normalize=False, rescale=True),
        summary="Randomly drops task-vector entries and rescales, then adds them to the base.",
        paper="https://arxiv.org/abs/2311.03099",
    ),
    task_vector_method(
        "breadcrumbs",
        sparsify=BREADCRUMBS,
        consensus=False,
        weighting=RecipeWeights(normalize=False, rescale=False),
        summary="Drops each task vector's largest outliers and smallest entries, then adds the rest to the base.",
        paper="https://arxiv.org/abs/2312.06795",
    ),
    task_vector_method(
        "breadcrumbs_ties",
        sparsify=BREADCRUMBS,
        consensus=True,
        weighting=RecipeWeights(normalize=False, rescale=False),
        summary="Breadcrumbs pruning followed by TIES sign election.",
        paper="https://arxiv.org/abs/2312.06795",
    ),
    task_vector_method(
        "della",
        sparsify=MAGPRUNE,
        consensus=True,
        weighting=RecipeWeights(normalize=True, rescale=True),
        summary="Drops smaller task-vector entries more often (MagPrune), rescales, and merges with sign election.",
        paper="https://arxiv.org/abs/2406.11617",
    ),
    task_vector_method(
        "della_linear",
        sparsify=MAGPRUNE,
        consensus=False,
        weighting=RecipeWeights(normalize=False, rescale=True),
        summary="Drops smaller task-vector entries more often (MagPrune), rescales, and adds them to the base.",
        paper="https://arxiv.org/abs/2406.11617",
    ),
    task_vector_method(
        "sce",
        sparsify=VARIANCE,
        consensus=True,
        weighting=EnergyWeights(),
        summary="Keeps the highest-variance entries, weights task vectors by energy, and erases sign conflicts.",
        paper="https://arxiv.org/abs/2408.07990",
    ),
)
"""The family's registered methods."""
