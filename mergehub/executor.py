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

from mergehub.errors import MergehubError, MergeMethodError
from mergehub.methods import get_method
from mergehub.plan import Plan, TensorJob
from mergehub.sources.base import DTYPES, TensorSource
from mergehub.writer import ShardedWriter

__all__ = ["Progress", "ExecutionStats", "execute", "resolve_device", "tensor_seed", "Cancelled"]

DEFAULT_PREFETCH_BYTES = 512 * 1024**2


class Cancelled(MergehubError, RuntimeError):
    """The merge was stopped on request before it finished."""


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


def merge_job(job: TensorJob, inputs: Sequence[torch.Tensor], *, input_dtype: str | None, device: torch.device, seed: int) -> torch.Tensor:
    """Merge one job's input tensors into its output tensor (on the CPU, in the job's dtype)."""
    method = get_method(job.method)
    if not DTYPES[job.dtype].is_floating_point:
        return inputs[0]
    staged = [t.to(device, non_blocking=True) for t in inputs]
    if input_dtype is not None:
        staged = [t.to(DTYPES[input_dtype]) for t in staged]
    compute = _compute_dtype(staged)
    staged = [t.to(compute) for t in staged]
    extra = {}
    if method.random:
        extra["generator"] = torch.Generator(device=device).manual_seed(tensor_seed(seed, job.name))
    try:
        result = method.kernel(staged, base_index=job.base_index, **dict(job.params), **extra)
    except MergeMethodError as e:
        raise MergeMethodError(f"{job.name}: {e.message}", hint=e.hint) from e
    return result.to(DTYPES[job.dtype]).cpu()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def execute(
    plan: Plan,
    sources: Sequence[TensorSource],
    writer: ShardedWriter,
    *,
    device: torch.device,
    seed: int = 0,
    prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
    readers: int = 4,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExecutionStats:
    """Run every job of `plan` in order, writing each output tensor through `writer`.

    Raises:
        Cancelled: `should_stop` returned True.
        MergehubError: reading, merging or writing failed.
    """
    started = time.perf_counter()
    jobs = plan.jobs
    pending: deque[tuple[TensorJob, list[Future[torch.Tensor]]]] = deque()
    in_flight = 0
    bytes_read = 0
    next_job = 0
    with ThreadPoolExecutor(readers, thread_name_prefix="mergehub-read") as read_pool, ThreadPoolExecutor(
        1, thread_name_prefix="mergehub-write"
    ) as write_pool:
        last_write: Future | None = None
        try:
            for done in range(len(jobs)):
                while next_job < len(jobs) and (not pending or in_flight + jobs[next_job].read_bytes <= prefetch_bytes):
                    job = jobs[next_job]
                    futures = [read_pool.submit(sources[i.model].read, i.name) for i in job.inputs]
                    pending.append((job, futures))
                    in_flight += job.read_bytes
                    next_job += 1
                if should_stop is not None and should_stop():
                    raise Cancelled("The merge was cancelled.", hint="Nothing was kept; start it again to finish.")
                job, futures = pending.popleft()
                inputs = [f.result() for f in futures]
                in_flight -= job.read_bytes
                bytes_read += job.read_bytes
                output = merge_job(job, inputs, input_dtype=plan.input_dtype, device=device, seed=seed)
                del inputs, futures
                if last_write is not None:
                    last_write.result()
                last_write = write_pool.submit(writer.write, job.name, output)
                del output
                if on_progress is not None:
                    on_progress(Progress(done + 1, len(jobs), bytes_read, plan.read_bytes, job.name))
            if last_write is not None:
                last_write.result()
        except BaseException:
            for _, futures in pending:
                for f in futures:
                    f.cancel()
            raise
    return ExecutionStats(time.perf_counter() - started, bytes_read, writer.bytes_written, _peak_rss_bytes())
