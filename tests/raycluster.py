"""A real Ray cluster on this machine, for tests and benchmarks: `ray start --head`, then worker nodes joined to it.

Each node is a `ray start --block` in its own process group, advertised on 127.0.0.2 (Ray swaps 127.0.0.1 for
the host's routable address, but keeps other loopback addresses). Leaving the context kills every process
group it started (SIGTERM, then SIGKILL), whatever happened; nothing else on the machine is touched.
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
from dataclasses import dataclass, field
from pathlib import Path

from mergehub.experiments.runner import LOOPBACK

__all__ = ["Cluster", "ray_cluster"]

RAY = str(Path(sys.executable).with_name("ray"))
_STARTED = "Ray runtime started"
_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


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


@dataclass
class Cluster:
    """A running cluster: its address, and the `ray start` process of each node (head first)."""

    address: str
    temp: Path
    cpus: int
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = self.temp / f"{name}.log"
        common = [
            "--node-ip-address",
            LOOPBACK,
            "--num-cpus",
            str(self.cpus),
            "--object-store-memory",
            str(80 * 1024**2),
            "--disable-usage-stats",
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [RAY, "start", *args, *common, "--block"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **_ENV},
                start_new_session=True,
            )
        self.nodes.append(process)
        deadline = time.monotonic() + 90
        while _STARTED not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        return process

    def add_worker(self, resources: str = "{}") -> subprocess.Popen:
        """Join one more node (with custom `resources`, as JSON) and return its process."""
        return self._start(["--address", self.address, "--resources", resources], f"worker-{len(self.nodes)}")

    def kill(self, node: subprocess.Popen) -> None:
        """Kill a node at once (SIGKILL to its process group), as a machine that is lost."""
        os.killpg(node.pid, signal.SIGKILL)


@contextmanager
def ray_cluster(*, workers: int = 1, cpus: int = 1, worker_resources: str = '{"worker_node": 1}') -> Iterator[Cluster]:
    """A head and `workers` worker nodes of `cpus` CPUs each; this process's environment is set to join it."""
    saved = {key: os.environ.get(key) for key in _ENV}
    os.environ.update(_ENV)
    temp = Path(tempfile.mkdtemp(prefix="mhray-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    cluster = Cluster(f"{LOOPBACK}:{_free_port()}", temp, cpus)
    try:
        cluster._start(
            [
                "--head",
                "--port",
                cluster.address.rsplit(":", 1)[1],
                "--include-dashboard=false",
                "--temp-dir",
                str(temp),
            ],
            "head",
        )
        for _ in range(workers):
            cluster.add_worker(worker_resources)
        yield cluster
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for node in reversed(cluster.nodes):
            _stop(node)
        subprocess.run(["rm", "-rf", str(temp)], check=False)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
