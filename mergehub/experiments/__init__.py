"""Merge experiments: parameter sweeps and evolutionary search over recipes, run as Ray tasks.

Needs the `experiments` extra (`pip install 'mergehub[experiments]'`: ray, cma, matplotlib), imported
only when an experiment runs.
"""

from mergehub.experiments.candidate import (
    Candidate,
    CandidateResult,
    EvalSettings,
    MemoryNeeds,
    RunSettings,
    memory_needs,
    run_candidate,
)
from mergehub.experiments.extras import INSTALL_HINT
from mergehub.experiments.results import Objective, Table
from mergehub.experiments.runner import LocalRunner, Progress, RayRunner, Resources
from mergehub.experiments.sweep import Sweep, prepare_sweep, run_sweep
from mergehub.experiments.variants import Variant, Vary, apply_variant, grid, parse_vary, sample, set_value

__all__ = [
    "INSTALL_HINT",
    "Candidate",
    "CandidateResult",
    "EvalSettings",
    "LocalRunner",
    "MemoryNeeds",
    "Objective",
    "Progress",
    "RayRunner",
    "Resources",
    "RunSettings",
    "Sweep",
    "Table",
    "Variant",
    "Vary",
    "apply_variant",
    "grid",
    "memory_needs",
    "parse_vary",
    "prepare_sweep",
    "run_candidate",
    "run_sweep",
    "sample",
    "set_value",
]
