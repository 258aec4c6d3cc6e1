"""One candidate of an experiment: merge a variant (in memory when it fits, else in a temporary directory) and score it.

A candidate is plain data, so that it travels to a Ray worker; `run_candidate` is the whole unit of
work and never raises for a merge or evaluation that fails: the failure is its result.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from mergehub import api
from mergehub.errors import EvaluationError, MergehubError
from mergehub.evaluation import EvalReport, MetricScore
from mergehub.plan import Plan

__all__ = [
    "EvalSettings",
    "RunSettings",
    "Candidate",
    "CandidateResult",
    "MemoryNeeds",
    "memory_needs",
    "available_memory",
    "run_candidate",
    "load_merged_model",
]

RUNTIME_BYTES = 1024**3
"""What a worker holds besides the weights: Python, torch, transformers, lm-eval and a batch of activations."""

Mode = Literal["auto", "memory", "disk"]


@dataclass(frozen=True)
class EvalSettings:
    """How every candidate is scored: lm-eval tasks and options, the same for all."""

    tasks: tuple[str, ...]
    limit: float | None = None
    num_fewshot: int | None = None
    batch_size: int | str = 8
    seed: int = 0
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False

    def options(self) -> dict[str, Any]:
        """The keyword arguments of `evaluation.evaluate` and `evaluate_loaded`."""
        return {k: v for k, v in asdict(self).items() if k != "tasks"}


@dataclass(frozen=True)
class RunSettings:
    """How every candidate is merged: seed, device, where inputs are cached, and in memory or on disk."""

    seed: int = 0
    device: str = "cpu"
    cache_dir: str | None = None
    token: str | None = None
    mode: Mode = "auto"
    scratch_dir: str | None = None
    threads: int | None = None


@dataclass(frozen=True)
class MemoryNeeds:
    """Host memory one candidate needs: merged into a state dict in memory, or written to disk and reloaded."""

    in_memory: int
    on_disk: int


@dataclass(frozen=True)
class Candidate:
    """A variant to merge and score (`recipe_yaml`), or a parent model to score as a reference (`model`)."""

    index: int
    name: str
    values: tuple[tuple[str, Any], ...] = ()
    recipe_yaml: str | None = None
    model: str | None = None
    needs: MemoryNeeds | None = None

    @property
    def is_parent(self) -> bool:
        """Whether the candidate is a parent scored for reference rather than a merge."""
        return self.model is not None


@dataclass(frozen=True)
class CandidateResult:
    """What became of one candidate: its scores, or the error that stopped it."""

    candidate: Candidate
    status: Literal["ok", "failed"]
    report: EvalReport | None = None
    error: str | None = None
    mode: str | None = None
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0
    node: str = field(default_factory=socket.gethostname)
    attempts: int = 1

    @property
    def ok(self) -> bool:
        """Whether the candidate was merged and scored."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data; `from_dict` reads it back."""
        data = asdict(self)
        data["candidate"]["values"] = [list(pair) for pair in self.candidate.values]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateResult:
        """Rebuild a result written by `to_dict`."""
        c = dict(data["candidate"])
        c["values"] = tuple((path, value) for path, value in c["values"])
        c["needs"] = MemoryNeeds(**c["needs"]) if c.get("needs") else None
        report = data.get("report")
        if report is not None:
            report = EvalReport(**{**report, "results": tuple(MetricScore(**r) for r in report["results"])})
        return cls(**{**data, "candidate": Candidate(**c), "report": report})


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def memory_needs(plan: Plan, *, eval_itemsize: int = 4) -> MemoryNeeds:
    """The host memory a candidate of this plan needs, from the plan alone.

    In memory: the merged state dict (`plan.write_bytes`) and the model object built from it, evaluated in
    float32 on the CPU, plus the runtime. On disk: the larger of the merge's working memory and the model
    reloaded for evaluation.
    """
    model_bytes = sum(_numel(job.shape) for job in plan.jobs) * eval_itemsize
    evaluation = model_bytes + RUNTIME_BYTES
    merge = plan.peak_memory_bytes + RUNTIME_BYTES
    return MemoryNeeds(
        in_memory=max(merge + plan.write_bytes, plan.write_bytes + evaluation), on_disk=max(merge, evaluation)
    )


def available_memory() -> int:
    """The memory this process may use: what Ray assigned to the task, else the host's available memory."""
    try:
        import ray

        if ray.is_initialized():
            assigned = ray.get_runtime_context().get_assigned_resources().get("memory")
            if assigned:
                return int(assigned)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _tied_keys(model: Any) -> set[str]:
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    return set(tied)


def load_merged_model(merged: api.MemoryMerge, device: str) -> tuple[Any, Any]:
    """A transformers model and tokenizer built from a merge held in memory; the state dict is emptied on the way.

    The model is built from the merged config without initialising weights, the state dict is loaded
    into it (float32 on the CPU, as `mergehub eval` loads a directory), and tied weights are tied again.

    Raises:
        EvaluationError: the merged tensors do not fit the architecture the config names.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    with tempfile.TemporaryDirectory(prefix="mergehub-model-files-") as scratch:
        for name, data in merged.files.items():
            (Path(scratch) / name).write_bytes(data)
        config = AutoConfig.from_pretrained(scratch)
        tokenizer = AutoTokenizer.from_pretrained(scratch)
    own = getattr(config, "dtype", None)
    dtype = own if device.startswith("cuda") and isinstance(own, torch.dtype) else torch.float32
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    loaded = model.load_state_dict(merged.tensors, strict=False)
    merged.tensors.clear()
    missing = set(loaded.missing_keys) - _tied_keys(model)
    if missing or loaded.unexpected_keys:
        raise EvaluationError(
            f"The merged tensors do not fit {type(model).__name__}: missing {sorted(missing)[:3]}, unexpected "
            f"{loaded.unexpected_keys[:3]}.",
            hint="Check the recipe's architecture; `mergehub merge` of the same recipe writes the tensors to inspect.",
        )
    model.tie_weights()
    return model.to(device).eval(), tokenizer


def _node() -> str:
    try:
        import ray

        if ray.is_initialized():
            return f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:8]}"
    except ImportError:
        pass
    return socket.gethostname()


def _device(run: RunSettings) -> str:
    try:
        import ray

        if ray.is_initialized() and ray.get_gpu_ids():
            return "cuda"
    except ImportError:
        pass
    return run.device


def _mode(candidate: Candidate, run: RunSettings) -> str:
    if run.mode != "auto" or candidate.needs is None:
        return "memory" if run.mode == "auto" else run.mode
    return "memory" if candidate.needs.in_memory <= available_memory() else "disk"


def _score_variant(
    candidate: Candidate, mode: str, settings: EvalSettings, run: RunSettings, device: str
) -> tuple[EvalReport, float, float]:
    from mergehub.evaluation import evaluate, evaluate_loaded

    recipe = api.parse_recipe(candidate.recipe_yaml or "")
    started = time.perf_counter()
    if mode == "memory":
        merged = api.merge_in_memory(recipe, device=device, seed=run.seed, token=run.token, cache_dir=run.cache_dir)
        model, tokenizer = load_merged_model(merged, device)
        merged_at = time.perf_counter()
        report = evaluate_loaded(model, tokenizer, settings.tasks, label=candidate.name, **settings.options())
        return report, merged_at - started, time.perf_counter() - merged_at
    with tempfile.TemporaryDirectory(prefix=f"mergehub-{candidate.name}-", dir=run.scratch_dir) as scratch:
        target = Path(scratch) / candidate.name
        api.run_merge(recipe, target, device=device, seed=run.seed, token=run.token, cache_dir=run.cache_dir)
        merged_at = time.perf_counter()
        report = evaluate(target, settings.tasks, device=device, token=run.token, **settings.options())
        report = replace(report, model=candidate.name)
        return report, merged_at - started, time.perf_counter() - merged_at


def run_candidate(candidate: Candidate, settings: EvalSettings, run: RunSettings) -> CandidateResult:
    """Merge and score one candidate (or score a parent); a failure is returned as a failed result, not raised."""
    if run.threads:
        import torch

        torch.set_num_threads(run.threads)
    device = _device(run)
    mode = "parent" if candidate.is_parent else _mode(candidate, run)
    started = time.perf_counter()
    try:
        if candidate.is_parent:
            from mergehub.evaluation import evaluate

            report = evaluate(
                candidate.model or "", settings.tasks, device=device, token=run.token, **settings.options()
            )
            return CandidateResult(
                candidate, "ok", report, mode=mode, eval_seconds=time.perf_counter() - started, node=_node()
            )
        report, merge_seconds, eval_seconds = _score_variant(candidate, mode, settings, run, device)
        return CandidateResult(
            candidate, "ok", report, mode=mode, merge_seconds=merge_seconds, eval_seconds=eval_seconds, node=_node()
        )
    except MergehubError as e:
        error = e.message
    except Exception as e:  # noqa: BLE001 - a candidate's failure is its result; the experiment goes on
        error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
    return CandidateResult(
        candidate, "failed", error=error, mode=mode, merge_seconds=time.perf_counter() - started, node=_node()
    )
