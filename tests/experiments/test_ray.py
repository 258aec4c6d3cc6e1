"""Sweeps on Ray: a local Ray started by mergehub, and a real two-node cluster on this machine that loses a node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergehub.experiments import CandidateResult, LocalRunner, RayRunner, prepare_sweep
from tests.experiments.conftest import LIMIT
from tests.raycluster import ray_cluster

ray = pytest.importorskip("ray")
pytest.importorskip("lm_eval")


def _running_on(runner: RayRunner, node: str, finished: set[int]) -> int:
    """The candidate started last on `node` among those not finished (waits up to 30 s for one to start)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = [i for i, nodes in runner.started().items() if i not in finished and nodes[-1].startswith(node)]
        if running:
            return running[-1]
        time.sleep(0.05)
    raise AssertionError(f"the worker node started no candidate; started: {runner.started()}, finished: {finished}")


def _reports(results):
    return {r.candidate.name: r.report.results for r in results}


def test_cli_sweep_on_a_local_ray_equals_a_sequential_run(linear_recipe: Path, perplexity_task: str, tmp_path: Path):
    """`mergehub sweep` starts Ray here (in its own process: one Ray session per process) on the loopback interface."""
    varies = ["models[1].parameters.weight=0.2,0.8"]
    sequential = list(
        prepare_sweep(linear_recipe, varies, [perplexity_task], limit=LIMIT).run(tmp_path / "seq", runner=LocalRunner())
    )
    out = tmp_path / "ray"
    command = [
        sys.executable,
        "-m",
        "mergehub",
        "sweep",
        str(linear_recipe),
        "--vary",
        varies[0],
        "--eval",
        perplexity_task,
        "--limit",
        str(LIMIT),
        "--out",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    on_ray = [CandidateResult.from_dict(c) for c in json.loads((out / "results.json").read_text())["candidates"]]
    assert all(r.ok for r in on_ray) and _reports(on_ray) == _reports(sequential)
    assert "Started a local Ray instance" in done.stderr


def test_two_node_cluster_loses_a_node_and_keeps_every_result(
    linear_recipe: Path, perplexity_task: str, tmp_path: Path
):
    varies = ["models[1].parameters.weight=0:1:6"]
    sequential = list(
        prepare_sweep(linear_recipe, varies, [perplexity_task]).run(tmp_path / "seq", runner=LocalRunner())
    )
    sweep = prepare_sweep(linear_recipe, varies, [perplexity_task])
    handler = signal.getsignal(signal.SIGTERM)
    with ray_cluster(workers=1) as cluster:
        worker = cluster.nodes[1]
        with RayRunner(cluster.address, retries=3) as runner:
            nodes = {n["NodeID"][:8]: n for n in ray.nodes() if n["Alive"]}
            assert len(nodes) == 2
            worker_id = next(k for k, n in nodes.items() if n["Resources"].get("worker_node"))
            results, killed_after = [], None
            for result in sweep.run(tmp_path / "cluster", runner=runner):
                results.append(result)
                if killed_after is None:
                    running = _running_on(runner, worker_id, {r.candidate.index for r in results})
                    on_worker = {i for i, nodes in runner.started().items() if nodes[-1].startswith(worker_id)}
                    cluster.kill(worker)  # the worker node dies with a candidate running on it
                    killed_after, kept = len(results), [r.candidate.name for r in sweep.table.results]

    assert signal.getsignal(signal.SIGTERM) == handler  # ray.init's own handler does not outlive the runner
    assert killed_after == 1
    assert set(kept) <= {r.candidate.name for r in sweep.table.results}  # nothing finished was lost
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    rerun = next(r for r in results if r.candidate.index == running)
    # started on the worker, finished on the head; unless it finished on the worker, first try, before the kill landed
    assert not rerun.node.endswith(worker_id) or rerun.attempts == 1
    late = {r.candidate.index for r in results[killed_after:] if r.node.endswith(worker_id)}
    assert late <= on_worker  # after the kill only candidates already running there could finish there
    assert _reports(results) == _reports(sequential)
    assert len(sweep.table.results) == 6 and (tmp_path / "cluster" / "results.csv").read_text().count("\nv0") == 6
