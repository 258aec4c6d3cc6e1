"""Merge on a GPU: agreement with the CPU, kernel bandwidth, and where the end-to-end time goes.

On a CUDA machine, for each method (linear, slerp, ties, dare_ties by default) on the 1.1B models
of bench_merge.py:

1. **Agreement.** `run_merge(..., device=cuda)` and `device=cpu` write two outputs, compared
   tensor by tensor: bit-identical for elementwise methods, within 1 bf16 ulp otherwise (random
   methods draw from the device's generator, so only their kept fraction can agree: reported, not
   checked).
2. **Kernel bandwidth.** The largest layer tensor's inputs, already on the device, merged
   `--repeats` times (CUDA events): the bytes a kernel must move (inputs read, output written, in
   their stored dtypes) per second, as a fraction of the device's peak (`--peak-gbs`, or the
   nominal peak of a known device, or a device-to-device copy measured here). Target for the
   elementwise methods: >= 70 %.
3. **Time split.** One pass over every tensor, each stage timed on its own: read (from the page
   cache), host-to-device, compute, device-to-host, write. Beside it, the overlapped merge's wall
   time: when transfers and compute overlap, it approaches read + write.

With `--device cpu` (no GPU), the same steps run on the CPU on the models chosen (`--small` for a
smoke test) as a dry run of the script: the GPU figures are still to be measured, and it says so.

    .venv/bin/python bench/gpu.py --workdir /tmp/mergehub-bench                       # a CUDA machine
    .venv/bin/python bench/gpu.py --device cpu --small --workdir /tmp/mergehub-bench   # dry run on CPU
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_merge import RECIPES, SMALL_SHAPE, LlamaShape, ensure_models, iter_output_tensors  # noqa: E402

NOMINAL_PEAK_GBS = {"H200": 4800, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "A100-SXM4-80GB": 2039, "L4": 300}
"""Nominal memory bandwidth (GB/s) of devices by a part of their name."""
ELEMENTWISE = {"linear", "task_arithmetic"}
RANDOM = {"dare_ties", "dare_linear", "della", "della_linear"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bandwidth(device: torch.device, override: float | None) -> tuple[float, str]:
    """The device's peak memory bandwidth in GB/s, and where the figure comes from."""
    if override:
        return override, "--peak-gbs"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for part, gbs in NOMINAL_PEAK_GBS.items():
            if part in name:
                return gbs, f"nominal for {name}"
    size = 1 << 28
    a, b = torch.empty(size, dtype=torch.uint8, device=device), torch.empty(size, dtype=torch.uint8, device=device)
    b.copy_(a)
    _sync(device)
    started = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    _sync(device)
    return 5 * 2 * size / (time.perf_counter() - started) / 1e9, "a copy measured here (read + write)"


def kernel_bandwidth(method: str, recipe: Path, device: torch.device, repeats: int) -> tuple[str, float, float]:
    """The largest layer tensor's merge on `device`: its name, seconds per merge, and GB/s it must move."""
    from mergehub.api import open_sources, plan_merge
    from mergehub.executor import merge_job
    from mergehub.methods import get_method

    with open_sources(recipe) as sources:
        plan = plan_merge(recipe, sources)
        by_key = sources.by_key()
        job = max((j for j in plan.jobs if ".layers." in j.name), key=lambda j: math.prod(j.shape))
        inputs = [by_key[i.model].read(i.name).to(device) for i in job.inputs]
    spec = get_method(job.method)
    merge_job(job, inputs, plan, method=spec, device=device)  # warm-up
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        output = merge_job(job, inputs, plan, method=spec, device=device)
    _sync(device)
    seconds = (time.perf_counter() - started) / repeats
    moved = sum(t.numel() * t.element_size() for t in inputs) + output.numel() * output.element_size()
    return job.name, seconds, moved / seconds / 1e9


def time_split(recipe: Path, device: torch.device, out: Path) -> dict[str, float]:
    """Seconds spent reading, copying to the device, merging, copying back and writing, each stage timed alone."""
    from mergehub.api import open_sources, plan_merge
    from mergehub.executor import merge_job
    from mergehub.methods import get_method
    from mergehub.writer import ShardedWriter

    split = dict.fromkeys(("read", "host-to-device", "compute", "device-to-host", "write"), 0.0)
    out.mkdir(parents=True)
    with open_sources(recipe) as sources:
        plan = plan_merge(recipe, sources)
        by_key = sources.by_key()
        writer = ShardedWriter(out, plan.shards)
        try:
            for job in plan.jobs:
                t0 = time.perf_counter()
                host = [by_key[i.model].read(i.name) for i in job.inputs]
                t1 = time.perf_counter()
                staged = [t.to(device) for t in host]
                _sync(device)
                t2 = time.perf_counter()
                merged = merge_job(job, staged, plan, method=get_method(job.method), device=device)
                _sync(device)
                t3 = time.perf_counter()
                merged = merged.cpu()
                t4 = time.perf_counter()
                writer.write(job.name, merged)
                t5 = time.perf_counter()
                for stage, seconds in zip(split, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                    split[stage] += seconds
            writer.write_index()
        finally:
            writer.close()
    return split


def compare(a: Path, b: Path) -> tuple[int, float, float]:
    """Tensors that differ, the largest absolute difference, and the largest in units of bf16 ulps at the value."""
    from safetensors import safe_open

    differ, largest, ulps = 0, 0.0, 0.0
    for name, path in iter_output_tensors(a):
        with safe_open(str(path), "pt") as fa:
            x = fa.get_tensor(name)
        other = next(p for n, p in iter_output_tensors(b) if n == name)
        with safe_open(str(other), "pt") as fb:
            y = fb.get_tensor(name)
        if torch.equal(x, y):
            continue
        differ += 1
        delta = (x.double() - y.double()).abs()
        ulp = torch.ldexp(torch.ones_like(delta), torch.frexp(x.double().abs().clamp(min=1e-30)).exponent - 8)
        largest, ulps = max(largest, float(delta.max())), max(ulps, float((delta / ulp).max()))
    return differ, largest, ulps


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, help="models are kept here between runs (shared with bench_merge.py)")
    p.add_argument("--methods", default="linear,slerp,ties,dare_ties")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run (default: cuda)")
    p.add_argument("--small", action="store_true", help="small models, for a smoke test")
    p.add_argument("--repeats", type=int, default=10, help="kernel runs timed per method (default: 10)")
    p.add_argument("--peak-gbs", type=float, help="the device's peak memory bandwidth, GB/s")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three measurements for each method and print them."""
    args = _parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: torch sees no CUDA device; use --device cpu for a dry run.", file=sys.stderr)
        return 2
    dry = device.type != "cuda"
    shape = SMALL_SHAPE if args.small else LlamaShape()
    temp = tempfile.TemporaryDirectory(prefix="mergehub-gpu-") if args.workdir is None else None
    workdir = Path(temp.name) if temp else args.workdir.resolve()
    try:
        root = workdir / ("models-small" if args.small else "models")
        models = dict(zip(("base", "ft1", "ft2"), ensure_models(root, shape, noise=0.01, shard_bytes=2**30)))
        peak, source = peak_bandwidth(device, args.peak_gbs)
        print(f"Device {device}: peak bandwidth {peak:.0f} GB/s ({source}); models {shape.parameters / 1e9:.3g}B")
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            recipe = workdir / f"gpu-{method}.yml"
            recipe.write_text(RECIPES[method].render(models, shape.layers))
            name, seconds, gbs = kernel_bandwidth(method, recipe, device, args.repeats)
            print(f"[{method}] kernel on {name}: {seconds * 1e3:.2f} ms, {gbs:.0f} GB/s = {gbs / peak:.0%} of peak")
            runs = workdir / f"gpu-{method}"
            shutil.rmtree(runs, ignore_errors=True)
            split = time_split(recipe, device, runs / "split")
            print(f"[{method}] stages timed alone: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))
            from mergehub.api import run_merge

            started = time.perf_counter()
            run_merge(recipe, runs / "device", device=str(device))
            overlapped = time.perf_counter() - started
            print(
                f"[{method}] overlapped merge on {device}: {overlapped:.2f} s; read + write alone "
                f"{split['read'] + split['write']:.2f} s"
            )
            run_merge(recipe, runs / "cpu", device="cpu")
            differ, largest, ulps = compare(runs / "device", runs / "cpu")
            if method in RANDOM:
                verdict = "random masks: the device draws its own, so outputs differ by design"
            elif method in ELEMENTWISE:
                verdict = "bit-identical" if differ == 0 else "DIFFERS (elementwise must be bit-identical)"
            else:
                verdict = "within 1 bf16 ulp" if ulps <= 1 else "MORE than 1 bf16 ulp apart"
            print(f"[{method}] vs CPU: {differ} tensors differ, max {largest:.3g} ({ulps:.2f} ulp): {verdict}")
            shutil.rmtree(runs, ignore_errors=True)
        if dry:
            print(
                "\nDry run on the CPU: the script works, but the GPU figures (bandwidth as a fraction of the "
                "device's peak, the time split, agreement with the CPU) are still to be measured on a CUDA machine."
            )
        return 0
    finally:
        if temp is not None:
            temp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
