"""Walks a plan tensor by tensor: read inputs ahead, merge with the method kernel, hand to the writer.

Inputs are looked up by the plan's model keys in the sources (keyed by `ModelRef`), never by position,
and a Hub model must be open at the commit the plan pinned.

Reads of upcoming tensors overlap the current computation, and writing overlaps both;
read-ahead is bounded by a byte budget, so memory depends on tensor sizes, not model size.
Readers count the NaN and Inf values of each input they fetched, the writer those of each
output, on tensors already in memory.

On the CPU, each of these threads runs torch with one thread of its own (`merge_threads`): the
elementwise kernels are memory-bound, and a second torch thread per caller spin-waits for a core the
reader, the writer or another process holds (measured under load: a chunk's median time went from
1.3 ms to 130 ms). Kernels that are not elementwise (sorting, ranking, SVD: the TIES family, slerp,
extraction) are compute-bound and get every usable core (`compute_threads`): on 2 cores della's
kernel ran in 0.62 s instead of 1.09 s, ties in 0.105 s instead of 0.151 s. `OMP_NUM_THREADS` sets
one count for all.

Reader and writer threads are daemons: when the merge stops (an error, Ctrl-C, SIGTERM) the
executor does not wait for a read stuck in the network.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from mergehub import pages
from mergehub.errors import Cancelled, MergehubError, MergeMethodError, PlanError, SourceError
from mergehub.methods import MethodSpec, get_kernel
from mergehub.methods._primitives import widen_dtype
from mergehub.plan import CHUNK_ELEMENTS, RETAINED_HEAP_BYTES, Plan, TensorJob, read_ahead_bytes
from mergehub.recipe import ModelRef
from mergehub.sources.adapter import AdapterSource
from mergehub.sources.base import DTYPES, TensorSource
from mergehub.vocab import align_rows
from mergehub.workers import DaemonPool
from mergehub.writer import TensorSink

T = TypeVar("T")

__all__ = [
    "compute_threads",
    "merge_threads",
    "Progress",
    "ExecutionStats",
    "NonFinite",
    "execute",
    "merge_job",
    "run_job",
    "resolve_device",
    "sources_by_key",
    "tensor_seed",
    "count_non_finite",
]

_WRITER_GRACE_SECONDS = 2.0
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Progress:
    """How far a merge has come, reported after each tensor."""

    tensors_done: int
    tensors_total: int
    bytes_read: int
    bytes_total: int
    current: str


@dataclass(frozen=True)
class NonFinite:
    """A tensor holding NaN or Inf values: an input of model `model` (its reference), or an output (`model` None)."""

    tensor: str
    count: int
    model: str | None = None

    def describe(self) -> str:
        """`tensor (N NaN/Inf)`, prefixed by the model for an input."""
        return f"{self.model + ': ' if self.model else ''}{self.tensor} ({self.count:,} NaN/Inf)"


@dataclass(frozen=True)
class ExecutionStats:
    """What a finished merge read, wrote and took, and what it found in the tensors on the way."""

    seconds: float
    bytes_read: int
    bytes_written: int
    peak_rss_bytes: int
    non_finite: tuple[NonFinite, ...] = ()
    """Inputs and outputs holding NaN or Inf values, inputs first, each once."""
    measures: dict[str, dict[str, float]] = field(default_factory=dict)
    """What kernels reported beside their tensors, by job name (an extraction's rank and reconstruction error)."""

    def warnings(self) -> list[str]:
        """One line each for the inputs and the outputs with NaN or Inf values (none when all are finite)."""
        lines = []
        for kind, found in (
            ("input", [n for n in self.non_finite if n.model]),
            ("output", [n for n in self.non_finite if not n.model]),
        ):
            if found:
                shown = ", ".join(n.describe() for n in found[:5]) + (
                    f", and {len(found) - 5} more" if len(found) > 5 else ""
                )
                lines.append(f"{len(found)} {kind} tensor(s) hold NaN or Inf values: {shown}.")
        return lines


def resolve_device(device: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available) as a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MergehubError(
            "--device cuda was asked for, but torch sees no CUDA device.", hint="Use --device cpu or auto."
        )
    return torch.device(device)


def merge_threads() -> int:
    """Torch threads per merging, reading or writing thread on the CPU: `OMP_NUM_THREADS` when set, else 1."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def compute_threads() -> int:
    """Torch threads for a compute-bound kernel on the CPU: `OMP_NUM_THREADS` when set, else every usable core."""
    if "OMP_NUM_THREADS" in os.environ:
        return merge_threads()
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _tune_malloc() -> None:
    """Fix glibc's malloc thresholds for a merge's allocations (Linux; `MALLOC_MMAP_THRESHOLD_` and
    `MALLOC_TRIM_THRESHOLD_` override).

    Blocks of 16 MiB and more are always served by mmap. By default the threshold rises to the size
    of each large block freed (up to 32 MiB), so the tensors read and merged afterwards come from the
    heaps of the reading threads, which fragment and keep their pages: measured on three 1.1B models,
    linear's peak went from 1.05 GiB above the import to 0.56 GiB with the threshold fixed.

    Fixing that threshold leaves the trim threshold at 128 KiB, so every chunk-sized scratch tensor a
    kernel frees at the top of the heap went back to the system and faulted in again when the next
    was allocated: ties on the 1.1B models took 44 s with 13.7 M page faults, 38.7 s of it in the
    kernel, and 23.7 s with 2.8 M faults once `RETAINED_HEAP_BYTES` (64 MiB) may stay free on the heap.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
            libc.mallopt(_M_TRIM_THRESHOLD, RETAINED_HEAP_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _with_threads(count: int, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` with torch limited to `count` threads in this thread (a pool thread's setting is its own)."""
    torch.set_num_threads(count)
    return fn(*args)


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed derived from the run seed and the tensor name: stable across runs and threads."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def merge_job(
    job: TensorJob,
    inputs: Sequence[torch.Tensor],
    plan: Plan,
    *,
    method: MethodSpec,
    device: torch.device,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Merge one job's input tensors into its output tensor (on the CPU, in the job's dtype).

    `method` is the job's, looked up once per plan by the caller (`execute`); random methods draw
    from a generator seeded from `plan.seed` and the tensor's name.

    Inputs are rounded to the recipe's `dtype` when it has one, re-indexed onto the output
    vocabulary for embedding and head tensors, and merged in float32 (float64 if an input is).
    Elementwise methods run on flat chunks of at most `chunk_elements`, so a large tensor never
    has a float32 copy of a whole input.
    """
    out_dtype = DTYPES[job.dtype]
    if not job.inputs:  # a constant the output format needs (zeros)
        return _run_kernel(method, job, [], device, plan.seed).to(out_dtype).cpu()
    if not out_dtype.is_floating_point:
        return inputs[0]
    staged = [t.to(device, non_blocking=True) for t in inputs]
    if plan.input_dtype is not None:
        staged = [t.to(DTYPES[plan.input_dtype]) for t in staged]
    if job.vocab and plan.vocab is not None:
        labels = [i.model for i in job.inputs]
        base = labels[job.base_index] if job.base_index is not None else None
        staged = align_rows(staged, labels, plan.vocab, base=base)
    if not method.elementwise or staged[0].numel() <= chunk_elements or len({t.shape for t in staged}) > 1:
        return _run_kernel(method, job, staged, device, plan.seed, out_dtype).to(out_dtype).cpu()
    return _merge_in_chunks(method, job, staged, plan.seed, out_dtype, chunk_elements)


def _merge_in_chunks(
    method: MethodSpec, job: TensorJob, staged: list[torch.Tensor], seed: int, out_dtype: torch.dtype, chunk: int
) -> torch.Tensor:
    """An elementwise merge over flat chunks widened into buffers allocated once: no whole float32 copy of an input.

    Fresh chunk-sized allocations page-fault on every use; reused rows of a cache-sized chunk do not.
    """
    flat = [t.reshape(-1) for t in staged]
    numel, device = flat[0].numel(), flat[0].device
    widened = torch.empty((len(flat), min(chunk, numel)), dtype=widen_dtype(flat), device=device)
    output = pages.empty(staged[0].shape, dtype=out_dtype)
    out = output.view(-1)
    for start in range(0, numel, chunk):
        stop = min(start + chunk, numel)
        rows = widened[:, : stop - start]
        for row, tensor in zip(rows, flat):
            row.copy_(tensor[start:stop])
        out[start:stop].copy_(_run_kernel(method, job, list(rows), device, seed))
    return output


def run_job(
    job: TensorJob,
    inputs: Sequence[torch.Tensor],
    plan: Plan,
    *,
    method: MethodSpec,
    device: torch.device,
) -> tuple[list[tuple[str, torch.Tensor]], dict[str, float]]:
    """A job's output tensors by name (on the CPU, in their dtypes), and the measures its kernel reported.

    A job without `outputs` is one merged tensor (`merge_job`); otherwise its kernel returns each output by role,
    beside numbers (an extraction's rank and reconstruction error).
    """
    if not job.outputs:
        return [(job.name, merge_job(job, inputs, plan, method=method, device=device))], {}
    staged = [t.to(device, non_blocking=True) for t in inputs]
    if plan.input_dtype is not None:
        staged = [t.to(DTYPES[plan.input_dtype]) for t in staged]
    result = _run_kernel(method, job, staged, device, plan.seed)
    tensors = [(out.name, result[out.role].to(DTYPES[out.dtype]).cpu()) for out in job.outputs]
    return tensors, {key: float(value) for key, value in result.items() if not isinstance(value, torch.Tensor)}


def _run_kernel(
    method: MethodSpec,
    job: TensorJob,
    tensors: list[torch.Tensor],
    device: torch.device,
    seed: int,
    out_dtype: torch.dtype | None = None,
) -> Any:
    """Call the method's kernel on the tensors in the compute dtype (or as stored, for a kernel that widens them
    itself, which then writes its result in `out_dtype`), naming the tensor in any error."""
    extra: dict[str, Any] = {}
    if not method.widens:
        tensors = [t.to(widen_dtype(tensors)) for t in tensors]
    elif out_dtype is not None:
        extra["out_dtype"] = out_dtype
    if method.random:
        extra["generator"] = torch.Generator(device=device).manual_seed(tensor_seed(seed, job.name))
    try:
        return method.kernel(tensors, base_index=job.base_index, **dict(job.params), **extra)
    except MergeMethodError as e:
        raise MergeMethodError(f"{job.name}: {e.message}", hint=e.hint) from e


def count_non_finite(tensor: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """How many NaN and Inf values a tensor holds (0 for integer tensors), checked in chunks to bound scratch memory.

    A chunk whose sum is finite holds neither (a NaN or an Inf makes any sum NaN or infinite), and summing is
    about ten times cheaper than testing each value; only a chunk whose sum is not finite is counted value by value.
    """
    if not tensor.dtype.is_floating_point or tensor.numel() == 0:
        return 0
    flat = tensor.reshape(-1)
    wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    count = 0
    for chunk in flat.split(chunk_elements):
        if math.isfinite(chunk.sum(dtype=wide).item()):
            continue
        count += chunk.numel() - int(torch.isfinite(chunk).sum())
    return count


def _read_counted(source: TensorSource, names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Read tensors and count their NaN/Inf values, in the reader's thread."""
    tensors = source.read_many(names)
    return tensors, {name: n for name, t in tensors.items() if (n := count_non_finite(t))}


def _write_counted(writer: TensorSink, outputs: list[tuple[str, torch.Tensor]]) -> list[tuple[str, int]]:
    """Count each output's NaN/Inf values, then write it, in the writer's thread; the outputs holding some."""
    found = []
    for name, tensor in outputs:
        if count := count_non_finite(tensor):
            found.append((name, count))
        writer.write(name, tensor)
    return found


def _strict_error(found: NonFinite) -> MergeMethodError:
    where = f"Input {found.tensor} of {found.model}" if found.model else f"The merged {found.tensor}"
    return MergeMethodError(
        f"{where} holds {found.count:,} NaN or Inf values.",
        hint="--strict makes this an error; without it the merge finishes and the card records it. Check the "
        "model's weights.",
        remedy="strict",
    )


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
    """A batch of jobs and, per input model, the future of its tensors (and of their NaN/Inf counts)."""

    jobs: list[TensorJob]
    reads: dict[str, Future[tuple[dict[str, torch.Tensor], dict[str, int]]]]
    read_bytes: int


def _submit(batch: list[TensorJob], sources: Mapping[str, TensorSource], pool: DaemonPool, threads: int) -> _Batch:
    names: dict[str, dict[str, None]] = {}
    for job in batch:
        for item in job.inputs:
            names.setdefault(item.model, {})[item.name] = None
    reads = {
        model: pool.submit(_with_threads, threads, _read_counted, sources[model], list(wanted))
        for model, wanted in names.items()
    }
    return _Batch(batch, reads, sum(j.read_bytes for j in batch))


def sources_by_key(plan: Plan, sources: Mapping[ModelRef, TensorSource]) -> dict[str, TensorSource]:
    """Each of the plan's models' source, by the plan's key; each Hub model must be open at its pinned commit.

    Raises:
        PlanError: a model of the plan has no source, or one at another commit.
    """
    by_key = {str(ref): source for ref, source in sources.items()}
    for model in plan.models:
        source = by_key.get(model.ref)
        if source is None:
            raise PlanError(
                f"The plan reads {model.ref}, but no source was given for it.",
                hint="Open the plan's models with `open_sources(plan)`.",
            )
        if model.revision is not None and source.revision != model.revision:
            raise PlanError(
                f"The plan reads {model.ref} at commit {model.revision}, but its source is at {source.revision}.",
                hint="Open the plan's models with `open_sources(plan)`, which pins each to the planned commit.",
            )
        adapter = source.adapter.revision if isinstance(source, AdapterSource) else None
        if model.adapter is not None and model.adapter.revision is not None and adapter != model.adapter.revision:
            raise PlanError(
                f"The plan applies {model.adapter.ref} at commit {model.adapter.revision}, "
                f"but its source is at {adapter}.",
                hint="Open the plan's models with `open_sources(plan)`, which pins each to the planned commit.",
            )
    return by_key


def execute(
    plan: Plan,
    sources: Mapping[ModelRef, TensorSource],
    writer: TensorSink,
    *,
    device: torch.device,
    prefetch_bytes: int | None = None,
    batch_bytes: int | None = None,
    readers: int = 4,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    strict: bool = False,
    threads: int | None = None,
) -> ExecutionStats:
    """Run every job of `plan` in order, writing each output tensor through `writer`.

    `sources` holds each of the plan's models, keyed by its `ModelRef` (see `open_sources`).
    Inputs are read in batches of consecutive jobs (one `read_many` per model and batch, a quarter
    of `prefetch_bytes` each), up to `prefetch_bytes` ahead of the tensor being merged (default:
    `read_ahead_bytes` of the plan, which its `peak_memory_bytes` counts on). The weight files the plan marks
    as verified are hashed by their sources as they stream, and must all match. On the CPU, torch runs
    `threads` threads (default: `merge_threads()`) in each of the merging, reading and writing threads, and as
    many for a kernel that is not elementwise (default: `compute_threads()`).

    Raises:
        PlanError: a model of the plan has no source, or one at another commit than planned.
        Cancelled: `should_stop` returned True.
        MergeMethodError: with `strict`, an input or output holds NaN or Inf values.
        MergehubError: reading, verifying, merging or writing failed.
    """
    started = time.perf_counter()
    _tune_malloc()
    by_key = sources_by_key(plan, sources)
    if prefetch_bytes is None:
        prefetch_bytes = read_ahead_bytes(plan.read_bytes)
    upcoming = deque(_batches(plan.jobs, batch_bytes or prefetch_bytes // 4))
    pending: deque[_Batch] = deque()
    in_flight = bytes_read = done = 0
    total = len(plan.jobs)
    methods = {name: get_kernel(name) for name in {job.method for job in plan.jobs}}
    measures: dict[str, dict[str, float]] = {}
    found: dict[tuple[str | None, str], NonFinite] = {}

    def record(item: NonFinite) -> None:
        if strict:
            raise _strict_error(item)
        found.setdefault((item.model, item.tensor), item)

    for entry in plan.input_files:
        if entry.verified:
            by_key[entry.model].verify([entry.file])
    read_pool, write_pool = DaemonPool(readers, "mergehub-read"), DaemonPool(1, "mergehub-write")
    last_write: Future[list[tuple[str, int]]] | None = None

    def record_written(future: Future[list[tuple[str, int]]] | None) -> None:
        for name, count in future.result() if future is not None else ():
            record(NonFinite(name, count))

    caller_threads, heavy_threads = torch.get_num_threads(), threads or compute_threads()
    threads = threads or merge_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        while upcoming or pending:
            while upcoming and (not pending or in_flight + sum(j.read_bytes for j in upcoming[0]) <= prefetch_bytes):
                pending.append(_submit(upcoming.popleft(), by_key, read_pool, threads))
                in_flight += pending[-1].read_bytes
            batch = pending.popleft()
            tensors = {}
            for model, future in batch.reads.items():
                tensors[model], counts = future.result()
                for name, count in counts.items():
                    record(NonFinite(name, count, model))
            last_use = {(i.model, i.name): k for k, job in enumerate(batch.jobs) for i in job.inputs}
            for k, job in enumerate(batch.jobs):
                if should_stop is not None and should_stop():
                    raise Cancelled("The merge was cancelled.", hint="Nothing was kept; start it again to finish.")
                inputs = [tensors[i.model][i.name] for i in job.inputs]
                for i in job.inputs:  # drop the batch's reference once no later job needs the tensor
                    if last_use.get((i.model, i.name)) == k:
                        tensors[i.model].pop(i.name, None)
                method = methods[job.method]
                if device.type == "cpu" and not method.elementwise:
                    torch.set_num_threads(heavy_threads)
                outputs, reported = run_job(job, inputs, plan, method=method, device=device)
                if device.type == "cpu" and not method.elementwise:
                    torch.set_num_threads(threads)
                del inputs
                if reported:
                    measures[job.name] = reported
                record_written(last_write)
                last_write = write_pool.submit(_with_threads, threads, _write_counted, writer, outputs)
                del outputs
                bytes_read += job.read_bytes
                done += 1
                if on_progress is not None:
                    on_progress(Progress(done, total, bytes_read, plan.read_bytes, job.name))
            in_flight -= batch.read_bytes
            del tensors, batch
        record_written(last_write)
        _check_verified(plan, by_key)
    except BaseException:
        read_pool.shutdown(wait=False, cancel_futures=True)
        for batch in pending:
            for future in batch.reads.values():
                future.cancel()
        if last_write is not None:
            wait([last_write], timeout=_WRITER_GRACE_SECONDS)  # a local write ends soon; then its file may be removed
        write_pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        torch.set_num_threads(caller_threads)
    read_pool.shutdown()
    write_pool.shutdown()
    ordered = sorted(found.values(), key=lambda n: n.model is None)
    return ExecutionStats(
        time.perf_counter() - started, bytes_read, writer.bytes_written, _peak_rss_bytes(), tuple(ordered), measures
    )


def _check_verified(plan: Plan, sources: Mapping[str, TensorSource]) -> None:
    """Every file the plan verifies was hashed whole (a mismatch has already raised in the reader)."""
    for entry in plan.input_files:
        if entry.verified and entry.file not in sources[entry.model].verified_files():
            raise SourceError(
                f"{entry.model}: {entry.file} could not be verified: not all of its bytes were read.",
                hint="This is a bug in mergehub; please report it with the recipe.",
            )
