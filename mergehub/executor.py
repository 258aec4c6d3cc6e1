"""Walks a plan tensor by tensor: read inputs ahead, merge with the method kernel, hand to the writer.

Reads of upcoming tensors overlap the current computation, and writing overlaps both;
read-ahead is bounded by a byte budget, so memory depends on tensor sizes, not model size.
"""

from __future__ import annotations

import hashlib
import resource
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from mergehub.errors import Cancelled, MergehubError, MergeMethodError
from mergehub.methods import MethodSpec, get_method
from mergehub.plan import Plan, TensorJob
from mergehub.sources.base import DTYPES, TensorSource
from mergehub.vocab import align_rows
from mergehub.writer import TensorSink

__all__ = ["Progress", "ExecutionStats", "execute", "resolve_device", "tensor_seed", "Cancelled"]

DEFAULT_PREFETCH_BYTES = 256 * 1024**2
DEFAULT_BATCH_BYTES = 64 * 1024**2
CHUNK_ELEMENTS = 4 * 1024**2


@dataclass(frozen=True)
class Progress:
    """How far a merge has come, reported after each tensor."""

    tensors_done: int
    tensors_total: int
    bytes_read: int
    bytes_total: int
    current: str


@dataclass(frozen=True)
class ExecutionStats:
    """What a finished merge read, wrote and took."""

    seconds: float
    bytes_read: int
    bytes_written: int
    peak_rss_bytes: int


def resolve_device(device: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available) as a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MergehubError("--device cuda was asked for, but torch sees no CUDA device.", hint="Use --device cpu or auto.")
    return torch.device(device)


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed derived from the run seed and the tensor name: stable across runs and threads."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _compute_dtype(inputs: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32


def merge_job(
    job: TensorJob, inputs: Sequence[torch.Tensor], plan: Plan, *, method: MethodSpec, device: torch.device, seed: int,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Merge one job's input tensors into its output tensor (on the CPU, in the job's dtype).

    `method` is the job's, looked up once per plan by the caller (`execute`).

    Inputs are rounded to the recipe's `dtype` when it has one, re-indexed onto the output
    vocabulary for embedding and head tensors, and merged in float32 (float64 if an input is).
    Elementwise methods run on row chunks of at most `chunk_elements`, so a large tensor never
    has float32 copies of all its inputs at once.
    """
    if not DTYPES[job.dtype].is_floating_point:
        return inputs[0]
    staged = [t.to(device, non_blocking=True) for t in inputs]
    if plan.input_dtype is not None:
        staged = [t.to(DTYPES[plan.input_dtype]) for t in staged]
    if job.vocab and plan.vocab is not None:
        labels = [plan.models[i.model].ref for i in job.inputs]
        base = labels[job.base_index] if job.base_index is not None else None
        staged = align_rows(staged, labels, plan.vocab, base=base)
    out_dtype = DTYPES[job.dtype]
    numel = staged[0].numel()
    if not method.elementwise or staged[0].dim() == 0 or numel <= chunk_elements:
        return _run_kernel(method, job, staged, device, seed).to(out_dtype).cpu()
    rows = max(1, chunk_elements // (numel // staged[0].shape[0]))
    output = torch.empty(staged[0].shape, dtype=out_dtype)
    for start in range(0, staged[0].shape[0], rows):
        output[start : start + rows] = _run_kernel(method, job, [t[start : start + rows] for t in staged], device, seed)
    return output


def _run_kernel(method: MethodSpec, job: TensorJob, tensors: list[torch.Tensor], device: torch.device, seed: int) -> torch.Tensor:
    """Call the method's kernel on the tensors in the compute dtype, naming the tensor in any error."""
    compute = _compute_dtype(tensors)
    tensors = [t.to(compute) for t in tensors]
    extra = {}
    if method.random:
        extra["generator"] = torch.Generator(device=device).manual_seed(tensor_seed(seed, job.name))
    try:
        return method.kernel(tensors, base_index=job.base_index, **dict(job.params), **extra)
    except MergeMethodError as e:
        raise MergeMethodError(f"{job.name}: {e.message}", hint=e.hint) from e


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _batches(jobs: Sequence[TensorJob], max_bytes: int) -> list[list[TensorJob]]:
    """Consecutive jobs grouped so each group reads at most `max_bytes` (a larger job stands alone)."""
    batches: list[list[TensorJob]] = []
    size = 0
    for job in jobs:
        if not batches or size + job.read_bytes > max_bytes:
            batches.append([])
            size = 0
        batches[-1].append(job)
        size += job.read_bytes
    return batches


@dataclass
class _Batch:
    """A batch of jobs and, per input model, the future of its tensors."""

    jobs: list[TensorJob]
    reads: dict[int, Future[dict[str, torch.Tensor]]]
    read_bytes: int


def _submit(batch: list[TensorJob], sources: Sequence[TensorSource], pool: ThreadPoolExecutor) -> _Batch:
    names: dict[int, dict[str, None]] = {}
    for job in batch:
        for item in job.inputs:
            names.setdefault(item.model, {})[item.name] = None
    reads = {model: pool.submit(sources[model].read_many, list(wanted)) for model, wanted in names.items()}
    return _Batch(batch, reads, sum(j.read_bytes for j in batch))


def execute(
    plan: Plan,
    sources: Sequence[TensorSource],
    writer: TensorSink,
    *,
    device: torch.device,
    seed: int = 0,
    prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    readers: int = 4,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExecutionStats:
    """Run every job of `plan` in order, writing each output tensor through `writer`.

    Inputs are read in batches of consecutive jobs (one `read_many` per model and batch),
    up to `prefetch_bytes` ahead of the tensor being merged.

    Raises:
        Cancelled: `should_stop` returned True.
        MergehubError: reading, merging or writing failed.
    """
    started = time.perf_counter()
    upcoming = deque(_batches(plan.jobs, batch_bytes))
    pending: deque[_Batch] = deque()
    in_flight = bytes_read = done = 0
    total = len(plan.jobs)
    methods = {name: get_method(name) for name in {job.method for job in plan.jobs}}
    with ThreadPoolExecutor(readers, thread_name_prefix="mergehub-read") as read_pool, ThreadPoolExecutor(
        1, thread_name_prefix="mergehub-write"
    ) as write_pool:
        last_write: Future | None = None
        try:
            while upcoming or pending:
                while upcoming and (not pending or in_flight + sum(j.read_bytes for j in upcoming[0]) <= prefetch_bytes):
                    pending.append(_submit(upcoming.popleft(), sources, read_pool))
                    in_flight += pending[-1].read_bytes
                batch = pending.popleft()
                tensors = {model: future.result() for model, future in batch.reads.items()}
                last_use = {(i.model, i.name): k for k, job in enumerate(batch.jobs) for i in job.inputs}
                for k, job in enumerate(batch.jobs):
                    if should_stop is not None and should_stop():
                        raise Cancelled("The merge was cancelled.", hint="Nothing was kept; start it again to finish.")
                    inputs = [tensors[i.model][i.name] for i in job.inputs]
                    for i in job.inputs:  # drop the batch's reference once no later job needs the tensor
                        if last_use.get((i.model, i.name)) == k:
                            tensors[i.model].pop(i.name, None)
                    output = merge_job(job, inputs, plan, method=methods[job.method], device=device, seed=seed)
                    del inputs
                    if last_write is not None:
                        last_write.result()
                    last_write = write_pool.submit(writer.write, job.name, output)
                    del output
                    bytes_read += job.read_bytes
                    done += 1
                    if on_progress is not None:
                        on_progress(Progress(done, total, bytes_read, plan.read_bytes, job.name))
                in_flight -= batch.read_bytes
                del tensors, batch
            if last_write is not None:
                last_write.result()
        except BaseException:
            for batch in pending:
                for future in batch.reads.values():
                    future.cancel()
            raise
    return ExecutionStats(time.perf_counter() - started, bytes_read, writer.bytes_written, _peak_rss_bytes())
