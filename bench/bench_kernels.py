"""Time merge-method kernels in-process on a few float32 tensors: no I/O, only the merge math.

Each method merges a base and two models (standard normal, the models base + noise) with its
parameters filled as the planner fills them; the table gives the fastest and the median of
`--repeats` runs. With `--mergekit`, mergekit 0.1.5's `merge_tensors` runs on the same inputs in
the same process and the ratio column compares the fastest times.

    .venv/bin/python bench/bench_kernels.py                                   # 2048x5632, 5 repeats
    .venv/bin/python bench/bench_kernels.py --shape 256x512 --repeats 2       # a quick check
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/bench_kernels.py   # time another checkout
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import mergehub
from mergehub.methods import get_method

DEFAULT_METHODS = ("linear", "ties", "dare_ties", "della", "breadcrumbs")
PARAMETERS: dict[str, dict[str, Any]] = {
    "linear": {"weight": 1.0},
    "task_arithmetic": {"weight": 0.5},
    "ties": {"weight": 0.5, "density": 0.5},
    "dare_ties": {"weight": 0.5, "density": 0.5},
    "dare_linear": {"weight": 0.5, "density": 0.5},
    "breadcrumbs": {"weight": 0.5, "density": 0.5, "gamma": 0.01},
    "breadcrumbs_ties": {"weight": 0.5, "density": 0.5, "gamma": 0.01},
    "della": {"weight": 0.5, "density": 0.5, "epsilon": 0.1},
    "della_linear": {"weight": 0.5, "density": 0.5, "epsilon": 0.1},
    "sce": {"select_topk": 0.5},
}


def inputs(shape: tuple[int, ...], count: int) -> list[torch.Tensor]:
    """A standard normal base and `count - 1` models near it, from a fixed seed."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=g)
    return [base] + [base + 0.1 * torch.randn(shape, generator=g) for _ in range(count - 1)]


def ours(name: str, tensors: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """A call of our kernel with every parameter resolved (base first), as the executor makes it."""
    spec = get_method(name)
    given = PARAMETERS.get(name, {})
    arguments: dict[str, Any] = {}
    for param in spec.params:
        value = given.get(param.name, param.default)
        if param.scope != "shared":
            value = tuple(None if param.scope == "non_base" and i == 0 else value for i in range(len(tensors)))
        arguments[param.argument] = value
    base_index = None if spec.base == "ignored" else 0
    if spec.random:
        return lambda: spec.kernel(
            tensors, base_index=base_index, generator=torch.Generator().manual_seed(0), **arguments
        )
    return lambda: spec.kernel(tensors, base_index=base_index, **arguments)


def theirs(name: str, tensors: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """The same merge by mergekit's `merge_tensors`."""
    from mergekit.merge_methods.api import merge_tensors

    parameters = dict(PARAMETERS.get(name, {}))
    base_index = None if get_method(name).base == "ignored" else 0
    if name == "linear":
        parameters["weight"] = [parameters["weight"]] * len(tensors)
    return lambda: merge_tensors(tensors, name, parameters=parameters, base_index=base_index)


def timings(run: Callable[[], torch.Tensor], repeats: int) -> list[float]:
    """Seconds of each of `repeats` runs, after one warm-up run."""
    run()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated method names")
    p.add_argument("--shape", default="2048x5632", help="tensor shape, e.g. 2048x5632 (default)")
    p.add_argument("--models", type=int, default=3, help="input tensors, the base included (default: 3)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per method (default: 5)")
    p.add_argument("--mergekit", action="store_true", help="also time mergekit's merge_tensors on the same inputs")
    args = p.parse_args()
    shape = tuple(int(n) for n in args.shape.lower().split("x"))
    tensors = inputs(shape, args.models)
    print(f"mergehub from {mergehub.__file__}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.models} float32 tensors of shape {list(shape)}, fastest and median of {args.repeats} runs (s)")
    header = f"{'method':18} {'fastest':>8} {'median':>8}"
    print(header + (f" {'mergekit':>9} {'ratio':>6}" if args.mergekit else ""))
    for name in (m.strip() for m in args.methods.split(",") if m.strip()):
        seconds = timings(ours(name, tensors), args.repeats)
        line = f"{name:18} {min(seconds):8.3f} {statistics.median(seconds):8.3f}"
        if args.mergekit:
            reference = min(timings(theirs(name, tensors), args.repeats))
            line += f" {reference:9.3f} {min(seconds) / reference:6.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
