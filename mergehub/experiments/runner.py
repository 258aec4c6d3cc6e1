"""Run candidates as Ray tasks (a local Ray by default, or a cluster), or one after another in this process.

Each candidate is one Ray task with declared resources: CPUs, GPUs when the cluster has them, and the
memory its plan needs (merged in memory when that fits the largest node, else written to disk); tasks are
spread over the nodes. Ray
retries a task whose worker or node is lost; a candidate that still fails is a failed result with its
error, never the end of the experiment. Results come back as candidates finish. Interrupting cancels
the candidates still pending; the ones already finished have been handed out.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mergehub.errors import ExperimentError
from mergehub.experiments.candidate import Candidate, CandidateResult, EvalSettings, RunSettings, run_candidate
from mergehub.experiments.extras import require

__all__ = ["Resources", "Progress", "LocalRunner", "RayRunner", "LOOPBACK"]
_POLL_SECONDS = 0.5
LOOPBACK = "127.0.0.2" if sys.platform.startswith("linux") else "127.0.0.1"
"""The address a Ray started here advertises: on Linux Ray swaps 127.0.0.1 for the host's routable address,
but keeps any other loopback address, so 127.0.0.2 keeps Ray's traffic on the loopback interface."""


@dataclass(frozen=True)
class Resources:
    """What each candidate asks of Ray: None means one GPU when the cluster has GPUs, and the memory its plan needs."""

    cpus: float = 1.0
    gpus: float | None = None
    memory: int | None = None


@dataclass(frozen=True)
class Progress:
    """How far the candidates have come: finished (failed among them), running now, and in all."""

    total: int
    done: int
    running: int
    failed: int


class LocalRunner:
    """Candidates one after another in this process: no Ray needed (a debugging aid, and the Space's way)."""

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(
        self,
        candidates: Sequence[Candidate],
        settings: EvalSettings,
        run: RunSettings,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Iterator[CandidateResult]:
        """Yield each candidate's result in turn."""
        failed = 0
        for done, candidate in enumerate(candidates):
            if on_progress is not None:
                on_progress(Progress(len(candidates), done, 1, failed))
            result = run_candidate(candidate, settings, run)
            failed += not result.ok
            yield result
        if on_progress is not None:
            on_progress(Progress(len(candidates), len(candidates), 0, failed))


class _StartedCandidates:
    """Which candidates started, and on which Ray node each attempt ran (an actor on the driver's node)."""

    def __init__(self) -> None:
        self.starts: dict[int, list[str]] = {}

    def start(self, index: int, node: str) -> None:
        self.starts.setdefault(index, []).append(node)

    def all(self) -> dict[int, list[str]]:
        return self.starts


def _started_tracker(ray: Any) -> Any:
    """The tracker that candidates tell when and where they start (for `running` and `attempts`)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0)(_StartedCandidates)
    return actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote()


def _candidate_task(candidate: Candidate, settings: EvalSettings, run: RunSettings, tracker: Any) -> CandidateResult:
    """The body of a candidate's Ray task."""
    if tracker is not None:
        import ray

        try:  # recorded before the candidate runs; a lost tracker never fails the candidate
            ray.get(tracker.start.remote(candidate.index, ray.get_runtime_context().get_node_id()), timeout=10)
        except Exception:  # noqa: BLE001 - the tracker only informs progress
            pass
    return run_candidate(candidate, settings, run)


def _describe(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".strip()


class RayRunner:
    """Candidates as Ray tasks; a context manager that starts Ray locally, or joins `address` (or `RAY_ADDRESS`).

    Args:
        address: A Ray cluster (`host:port`, `auto`, `ray://...`); None starts Ray here, on the loopback
            interface (`LOOPBACK`), without dashboard or usage statistics.
        resources: What each candidate asks for.
        retries: How often Ray reruns a candidate whose worker or node was lost.
    """

    def __init__(self, address: str | None = None, *, resources: Resources = Resources(), retries: int = 3) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.resources = resources
        self.retries = retries
        self._started_ray = False
        self.ray: Any = None
        self.tracker: Any = None
        self._started: dict[int, list[str]] = {}

    def __enter__(self) -> RayRunner:
        ray = self.ray = require(
            "ray", "Running candidates on Ray", alternative=", or pass --no-ray to run them one after another here"
        )
        if ray.is_initialized():
            return self
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        handler = signal.getsignal(signal.SIGTERM)
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, _node_ip_address=LOOPBACK, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = self.address or "this machine"
            raise ExperimentError(
                f"Could not start or join Ray on {where}: {e}",
                hint="Check --ray-address / RAY_ADDRESS (`ray status` on the head shows it), or omit it to "
                "start Ray here.",
            ) from e
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(
                signal.SIGTERM, handler
            )  # ray.init replaces it; the caller's (the CLI's) stops us, and __exit__ stops Ray
        self._started_ray = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False

    def _memory(self, candidate: Candidate, largest: float) -> int | None:
        """The memory a candidate declares: in memory if that fits the largest node, else on disk."""
        if self.resources.memory is not None:
            return self.resources.memory
        needs = candidate.needs
        if needs is None:
            return None
        if needs.in_memory <= largest:
            return needs.in_memory
        if needs.on_disk <= largest:
            return needs.on_disk
        raise ExperimentError(
            f"Candidate {candidate.name} needs {needs.on_disk / 2**30:.1f} GiB of memory even when written to disk; "
            f"the largest Ray node offers {largest / 2**30:.1f} GiB.",
            hint="Add a larger node, or declare less with --memory-per-candidate (at the risk of running out).",
        )

    def run(
        self,
        candidates: Sequence[Candidate],
        settings: EvalSettings,
        run: RunSettings,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Iterator[CandidateResult]:
        """Submit every candidate, then yield results as they finish (not in candidate order)."""
        ray = self.ray
        if ray is None:
            raise ExperimentError("RayRunner.run was called outside `with RayRunner(...)`.")
        cluster = ray.cluster_resources()
        gpus = self.resources.gpus if self.resources.gpus is not None else (1.0 if cluster.get("GPU") else 0.0)
        largest = max((node["Resources"].get("memory", 0) for node in ray.nodes() if node.get("Alive")), default=0)
        run = replace(run, threads=max(1, int(self.resources.cpus)))
        task = ray.remote(_candidate_task)
        self.tracker = tracker = _started_tracker(ray)
        pending: dict[Any, Candidate] = {}
        for candidate in candidates:
            options: dict[str, Any] = {
                "num_cpus": self.resources.cpus,
                "num_gpus": gpus,
                "max_retries": self.retries,
                "name": candidate.name,
                "scheduling_strategy": "SPREAD",
            }
            memory = self._memory(candidate, largest)
            if memory:
                options["memory"] = memory
            pending[task.options(**options).remote(candidate, settings, run, tracker)] = candidate
        done = failed = 0
        try:
            while pending:
                ready, rest = ray.wait(list(pending), num_returns=1, timeout=_POLL_SECONDS)
                if ready and rest:
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                for ref in ready:
                    candidate = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as e:  # lost worker or node after Ray's retries, or cancelled
                        result = CandidateResult(
                            candidate, "failed", error=f"{_describe(e)} (after up to {self.retries} retries)"
                        )
                    done += 1
                    failed += not result.ok
                    yield replace(result, attempts=max(1, len(self.started().get(candidate.index, ()))))
                if on_progress is not None:
                    started = self.started()
                    on_progress(
                        Progress(len(candidates), done, sum(c.index in started for c in pending.values()), failed)
                    )
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def started(self) -> dict[int, list[str]]:
        """Each started candidate's index and the Ray node ids of its attempts (the last known, if the tracker is
        slow)."""
        if self.tracker is not None:
            try:
                self._started = self.ray.get(self.tracker.all.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - the tracker only informs the progress bar and `attempts`; keep what it last said
                pass
        return self._started
