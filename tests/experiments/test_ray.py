"""Sweeps on Ray: a local Ray started by mergehub, and a real two-node cluster on this machine that loses a node.

The cluster is started with `ray start --head` and `ray start --address` (each `--block`, in its own
process group) on 127.0.0.2: Ray replaces 127.0.0.1 by the host's routable address, but keeps other
loopback addresses. Both process groups are killed on teardown, whatever happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mergehub.experiments import LocalRunner, RayRunner, prepare_sweep
from mergehub.experiments.runner import LOOPBACK
from tests.experiments.conftest import LIMIT

ray = pytest.importorskip("ray")
pytest.importorskip("lm_eval")

RAY = str(Path(sys.executable).with_name("ray"))
STARTED = "Ray runtime started"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """One `ray start --block` in its own process group; returns once the node is up."""
    with open(log, "wb") as out:
        process = subprocess.Popen([RAY, "start", *args, "--block"], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 90
    while STARTED not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return process


def _stop(process: subprocess.Popen) -> None:
    """End a node: SIGTERM to its process group, SIGKILL to what is left after 3 s."""
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                process.wait()
                return
            time.sleep(0.2)


@contextmanager
def two_node_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, subprocess.Popen]]:
    """A head (1 CPU) and a worker node (1 CPU, resource `worker_node`) on the loopback interface; yields the address."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    for key in ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE"):
        monkeypatch.setenv(key, env[key])
    temp = tempfile.mkdtemp(prefix="mhray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port = _free_port()
    address = f"{LOOPBACK}:{port}"
    common = ["--node-ip-address", LOOPBACK, "--num-cpus", "1", "--object-store-memory", str(80 * 1024**2), "--disable-usage-stats"]
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(_start(["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", temp, *common],
                            Path(temp) / "head.log", env))
        nodes.append(_start(["--address", address, "--resources", '{"worker_node": 1}', *common], Path(temp) / "worker.log", env))
        yield address, nodes[1]
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for node in reversed(nodes):
            _stop(node)
        subprocess.run(["rm", "-rf", temp], check=False)


def _running_on(runner: RayRunner, node: str, finished: set[int]) -> int:
    """The candidate started last on `node` among those not finished (waits up to 30 s for one to start)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = [i for i, nodes in runner.started().items() if i not in finished and nodes[-1].startswith(node)]
        if running:
            return running[-1]
        time.sleep(0.05)
    raise AssertionError(f"the worker node started no candidate: {runner.started()} {finished}")


def _reports(results):
    return {r.candidate.name: r.report.results for r in results}


def test_local_ray_sweep_equals_a_sequential_run(linear_recipe: Path, perplexity_task: str, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    varies = ["models[1].parameters.weight=0.2,0.8"]
    sequential = list(prepare_sweep(linear_recipe, varies, [perplexity_task], limit=LIMIT).run(tmp_path / "seq", runner=LocalRunner()))
    with RayRunner() as runner:
        nodes = [n["NodeManagerAddress"] for n in ray.nodes()]
        on_ray = list(prepare_sweep(linear_recipe, varies, [perplexity_task], limit=LIMIT).run(tmp_path / "ray", runner=runner))
    assert nodes == [LOOPBACK] and not ray.is_initialized()
    assert all(r.ok for r in on_ray) and _reports(on_ray) == _reports(sequential)


def test_two_node_cluster_loses_a_node_and_keeps_every_result(linear_recipe: Path, perplexity_task: str, tmp_path: Path, monkeypatch):
    varies = ["models[1].parameters.weight=0:1:6"]
    sequential = list(prepare_sweep(linear_recipe, varies, [perplexity_task]).run(tmp_path / "seq", runner=LocalRunner()))
    sweep = prepare_sweep(linear_recipe, varies, [perplexity_task])
    with two_node_cluster(monkeypatch) as (address, worker):
        with RayRunner(address, retries=3) as runner:
            nodes = {n["NodeID"][:8]: n for n in ray.nodes() if n["Alive"]}
            assert len(nodes) == 2
            worker_id = next(k for k, n in nodes.items() if n["Resources"].get("worker_node"))
            results, killed_after = [], None
            for result in sweep.run(tmp_path / "cluster", runner=runner):
                results.append(result)
                if killed_after is None:
                    running = _running_on(runner, worker_id, {r.candidate.index for r in results})
                    on_worker = {i for i, nodes in runner.started().items() if nodes[-1].startswith(worker_id)}
                    os.killpg(worker.pid, signal.SIGKILL)  # the worker node dies with a candidate running on it
                    killed_after, kept = len(results), [r.candidate.name for r in sweep.table.results]

    assert killed_after == 1
    assert set(kept) <= {r.candidate.name for r in sweep.table.results}  # nothing finished was lost
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    rerun = next(r for r in results if r.candidate.index == running)
    assert not rerun.node.endswith(worker_id)  # started on the worker, finished on the head
    late = {r.candidate.index for r in results[killed_after:] if r.node.endswith(worker_id)}
    assert late <= on_worker - {running}  # after the kill only candidates already running there could finish there
    assert _reports(results) == _reports(sequential)
    assert len(sweep.table.results) == 6 and (tmp_path / "cluster" / "results.csv").read_text().count("\nv0") == 6
