"""The `mergehub sweep` and `mergehub evolve` commands: arguments in, progress bar, table and files out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mergehub.errors import OutputError
from mergehub.interfaces.signals import Terminated, exit_code

__all__ = ["add_commands", "COMMANDS"]


def _size(text: str) -> int:
    from mergehub.interfaces.cli import parse_size

    return parse_size(text)


def _run_options(parser: argparse.ArgumentParser) -> None:
    ray = parser.add_argument_group("where candidates run")
    ray.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else start Ray here)")
    ray.add_argument("--no-ray", action="store_true", help="run candidates one after another in this process")
    ray.add_argument(
        "--cpus-per-candidate", type=float, default=1.0, help="CPUs each candidate asks of Ray (default: 1)"
    )
    ray.add_argument(
        "--gpus-per-candidate", type=float, help="GPUs each candidate asks for (default: 1 when the cluster has GPUs)"
    )
    ray.add_argument(
        "--memory-per-candidate", type=_size, help="memory each candidate asks for (default: computed from its plan)"
    )
    ray.add_argument(
        "--retries", type=int, default=3, help="reruns of a candidate whose worker or node was lost (default: 3)"
    )
    ray.add_argument(
        "--merge-to",
        choices=("auto", "memory", "disk"),
        default="auto",
        help="merge into memory, or write shards to a temporary directory (default: memory when it fits)",
    )
    ray.add_argument(
        "--cache-dir",
        help="node-local cache of tensors streamed from the Hub (default: a folder in the system temp dir)",
    )
    ray.add_argument(
        "--device", default="cpu", help="device to merge and score on without a GPU from Ray (default: cpu)"
    )
    ray.add_argument("--no-progress", action="store_true", help="no progress bar")
    push = parser.add_argument_group("pushing the winner")
    push.add_argument("--private", action="store_true", help="create the pushed repo private")
    push.add_argument("--force", action="store_true", help="push into an existing repo mergehub did not make")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in a non-empty --out directory")


def add_commands(commands: Any) -> None:
    """Add `sweep` and `evolve` to the CLI's subcommands."""
    sweep = commands.add_parser("sweep", help="merge and score every variant of a recipe (on Ray)")
    sweep.add_argument("recipe", help="mergekit YAML recipe the variants start from")
    sweep.add_argument(
        "--vary",
        action="append",
        required=True,
        metavar="PATH=VALUES",
        help="a recipe path and its values: `models[1].parameters.weight=0.3,0.5,0.7` or "
        "`parameters.density=0.2:0.8:4`; "
        "several make a grid",
    )
    sweep.add_argument(
        "--eval", required=True, metavar="TASKS", help="comma-separated lm-eval tasks that score each variant"
    )
    sweep.add_argument("--limit", type=float, help="documents per task (a fraction when below 1)")
    sweep.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    sweep.add_argument("--batch-size", default="8", help="documents per forward pass (default: 8)")
    sweep.add_argument("--samples", type=int, help="draw this many random points instead of the grid")
    sweep.add_argument(
        "--seed", type=int, default=0, help="seed for random samples, random merge methods and lm-eval (default: 0)"
    )
    sweep.add_argument(
        "--eval-parents", action="store_true", help="score the parents too, as reference lines on the plots"
    )
    sweep.add_argument(
        "--objective",
        action="append",
        default=[],
        metavar="TASK/METRIC[=WEIGHT]",
        help="what ranks the variants (default: the mean of each task's first metric)",
    )
    sweep.add_argument("--out", help="results directory (default: sweep-<recipe name>)")
    sweep.add_argument("--dry-run", action="store_true", help="plan every variant and print them; merge nothing")
    sweep.add_argument(
        "--push-best", metavar="REPO", help="push the best variant, with the sweep as evidence in its card"
    )
    _run_options(sweep)

    evolve = commands.add_parser("evolve", help="CMA-ES search over a mergekit-evolve genome (on Ray)")
    evolve.add_argument("config", help="mergekit-evolve configuration (genome, tasks, limit, num_fewshot)")
    evolve.add_argument("--out", required=True, help="search directory: checkpoint, best.yml, results, plot")
    evolve.add_argument("--resume", action="store_true", help="continue the search checkpointed in --out")
    evolve.add_argument("--max-fevals", type=int, default=100, help="evaluations in all (default: 100)")
    evolve.add_argument("--sigma0", type=float, default=1 / 6, help="initial CMA-ES step size (default: 1/6)")
    evolve.add_argument(
        "--popsize", "--force-population-size", dest="popsize", type=int, help="population size (default: CMA-ES's)"
    )
    evolve.add_argument(
        "--seed", type=int, default=0, help="seed of CMA-ES, random merge methods and lm-eval (default: 0)"
    )
    evolve.add_argument("--push", metavar="REPO", help="push the best merge, with the search in its card")
    _run_options(evolve)


def _stopped(error: KeyboardInterrupt) -> str:
    return "terminated" if isinstance(error, Terminated) else "interrupted"


class _Bar:
    """A tqdm bar over candidates: done/running/failed, with tqdm's ETA."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None

    def __call__(self, progress: Any) -> None:
        from tqdm.auto import tqdm

        if self.bar is None or self.bar.total != progress.total:
            self.close()
            self.bar = tqdm(total=progress.total, unit="candidate", desc=self.label, dynamic_ncols=True)
        postfix = f"running {progress.running}, failed {progress.failed}"
        if progress.done != self.bar.n or postfix != self.bar.postfix:
            self.bar.set_postfix_str(postfix, refresh=False)
            if progress.done != self.bar.n:
                self.bar.update(progress.done - self.bar.n)
            else:
                self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _runner(args: argparse.Namespace) -> Any:
    from mergehub.experiments import LocalRunner, RayRunner, Resources

    if args.no_ray:
        return LocalRunner()
    resources = Resources(cpus=args.cpus_per_candidate, gpus=args.gpus_per_candidate, memory=args.memory_per_candidate)
    return RayRunner(args.ray_address, resources=resources, retries=args.retries)


def _run_settings(args: argparse.Namespace) -> Any:
    import tempfile

    from mergehub.experiments import RunSettings

    cache = args.cache_dir or str(Path(tempfile.gettempdir()) / "mergehub-tensor-cache")
    return RunSettings(seed=args.seed, device=args.device, cache_dir=cache, mode=args.merge_to)


def _check_out(out: Path, marker: str, overwrite: bool) -> None:
    if (out / marker).exists() and not overwrite:
        raise OutputError(f"{out} already holds results ({marker}).", hint="Choose another --out, or pass --overwrite.")


def _sweep(args: argparse.Namespace) -> int:
    from mergehub.experiments import prepare_sweep

    batch: int | str = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    sweep = prepare_sweep(
        args.recipe,
        args.vary,
        [t.strip() for t in args.eval.split(",") if t.strip()],
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=batch,
        samples=args.samples,
        seed=args.seed,
        eval_parents=args.eval_parents,
        objective=args.objective,
    )
    print(sweep.describe())
    if args.dry_run:
        print("Sweep OK: every variant planned.", file=sys.stderr)
        return 0
    out = Path(args.out or f"sweep-{Path(args.recipe).stem}")
    _check_out(out, "results.json", args.overwrite)
    bar = None if args.no_progress else _Bar("sweep")
    try:
        with _runner(args) as runner:
            for _ in sweep.run(out, runner=runner, run=_run_settings(args), on_progress=bar):
                pass
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        if bar is not None:
            bar.close()
        print(f"{_stopped(e)}: {len(sweep.table.results)} finished candidate(s) kept in {out}.", file=sys.stderr)
        return exit_code(e)
    finally:
        if bar is not None:
            bar.close()
    print(sweep.table.markdown())
    best = sweep.table.best()
    print(f"\nResults in {out}: results.csv, results.json, summary.md, plots, variants/.")
    if best is None:
        print("No variant succeeded.", file=sys.stderr)
        return 1
    print(
        f"Best: {best.candidate.name} ({dict(best.candidate.values)}): "
        f"{out / 'variants' / (best.candidate.name + '.yml')}"
    )
    if args.push_best:
        _push_sweep(args, sweep, out, best)
    return 0


def _push_sweep(args: argparse.Namespace, sweep: Any, out: Path, best: Any) -> None:
    from mergehub.experiments.publish import push_winner

    drawn = sweep.write(out)
    text = (
        f"This model is the best of {len(sweep.table.variants())} variants of a sweep over "
        f"{', '.join(f'`{v.path}`' for v in sweep.varies)}, each merged and scored with lm-eval on "
        f"{', '.join(sweep.settings.tasks)}; objective: {sweep.objective.describe(best.report)}. "
        "All variants are below and in `sweep-results.csv`/`sweep-results.json`."
    )
    evidence = []
    for name in ("results.csv", "results.json"):
        renamed = out / f"sweep-{name}"
        renamed.write_bytes((out / name).read_bytes())
        evidence.append(renamed)
    parents = {r.candidate.model: r.report for r in sweep.table.parents() if r.report is not None}
    run = _run_settings(args)
    pushed = push_winner(
        out / "variants" / f"{best.candidate.name}.yml",
        args.push_best,
        report=best.report,
        table_markdown=sweep.table.markdown(),
        section_title="Sweep",
        section_text=text,
        evidence=evidence,
        images=drawn,
        parents=parents,
        private=args.private,
        force=args.force,
        seed=run.seed,
        device=args.device,
        cache_dir=run.cache_dir,
    )
    print(f"Pushed {best.candidate.name} to {pushed.repo_id}: {pushed.commit_url}")


def _evolve(args: argparse.Namespace) -> int:
    from mergehub.experiments.evolve import Evolution, EvolveOptions
    from mergehub.experiments.genome import load_evolve_config

    out = Path(args.out)
    if not args.resume:
        _check_out(out, "checkpoint.pkl", args.overwrite)
        if args.overwrite:
            (out / "checkpoint.pkl").unlink(missing_ok=True)
    options = EvolveOptions(sigma0=args.sigma0, max_fevals=args.max_fevals, popsize=args.popsize, seed=args.seed)
    search = Evolution(load_evolve_config(args.config), out, options)
    for warning in search.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    bar = None if args.no_progress else _Bar("generation")
    try:
        with _runner(args) as runner:
            for generation in search.run(runner=runner, run=_run_settings(args), resume=args.resume, on_progress=bar):
                if bar is not None:
                    bar.close()
                print(
                    f"generation {generation.generation}: best {generation.best:.4f}, mean {generation.mean:.4f}, "
                    f"best so far {generation.best_so_far:.4f} ({generation.evaluations} evaluations, "
                    f"{generation.failed} failed)"
                )
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        print(
            f"{_stopped(e)}: the search is checkpointed in {out} after its last full generation; --resume "
            "continues it.",
            file=sys.stderr,
        )
        return exit_code(e)
    finally:
        if bar is not None:
            bar.close()
    if search.best is None:
        print("No candidate succeeded.", file=sys.stderr)
        return 1
    print(
        f"Best fitness {search.best[0]:.4f}: {out / 'best.yml'} (mergehub merge {out / 'best.yml'} OUT reproduces it)"
    )
    if args.push:
        _push_evolve(args, search, out)
    return 0


def _push_evolve(args: argparse.Namespace, search: Any, out: Path) -> None:
    from mergehub.experiments.publish import push_winner

    rows = ["| Generation | Evaluations | Best | Mean | Best so far | Failed |", "|---|---|---|---|---|---|"]
    rows += [
        f"| {g.generation} | {g.evaluations} | {g.best:.4f} | {g.mean:.4f} | {g.best_so_far:.4f} | {g.failed} |"
        for g in search.generations
    ]
    text = (
        f"This model is the best of {len(search.table.results)} candidates of a CMA-ES search over a "
        "mergekit-evolve genome "
        f"(shape {list(search.genome.shape)}, {len(search.generations)} generations, sigma0 "
        f"{search.options.sigma0:g}, seed "
        f"{search.options.seed}); fitness: {search.objective.describe()}. Every candidate is in `evolve-results.csv`."
    )
    evidence = []
    for name in ("results.csv", "evolve.json"):
        renamed = out / (name if name.startswith("evolve") else f"evolve-{name}")
        if renamed != out / name:
            renamed.write_bytes((out / name).read_bytes())
        evidence.append(renamed)
    run = _run_settings(args)
    pushed = push_winner(
        out / "best.yml",
        args.push,
        report=search.best_report,
        table_markdown="\n".join(rows),
        section_title="Evolutionary search",
        section_text=text,
        evidence=evidence,
        images=[out / "evolve.png"],
        private=args.private,
        force=args.force,
        seed=run.seed,
        device=args.device,
        cache_dir=run.cache_dir,
    )
    print(f"Pushed the best candidate to {pushed.repo_id}: {pushed.commit_url}")


COMMANDS = {"sweep": _sweep, "evolve": _evolve}
