"""The `mergehub` command line: every expected failure becomes one message, where it is, a hint, and an exit code.

Exit codes: 0 done; 1 a mergehub error (the message says what, the hint what to do); 2 a usage error
(argparse); 70 an unexpected error, which is a bug (rerun with `--debug` for the traceback); 130 Ctrl-C;
143 SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mergehub.errors import MergehubError, RecipeWarning
from mergehub.interfaces import experiments, workflow
from mergehub.interfaces.signals import Terminated, exit_code, stop_on_signals

if TYPE_CHECKING:
    from mergehub import api

__all__ = ["main", "parse_size", "BUG_EXIT_CODE"]

BUG_EXIT_CODE = 70
"""The exit code of an unexpected error (sysexits' EX_SOFTWARE): a bug in mergehub, not in the user's input."""

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """Parse a byte count such as `2GB`, `500MB`, `1GiB` or `123456`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 2GB, 500MB or 1GiB")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergehub", description="Merge language models with mergekit recipes, streaming."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    merge = commands.add_parser("merge", help="run a merge recipe (or a multi-stage recipe, or a mergekit-moe config)")
    merge.add_argument("recipe", help="mergekit YAML recipe; several YAML documents make a multi-stage recipe")
    merge.add_argument("out", nargs="?", help="output directory (not needed with --dry-run)")
    merge.add_argument(
        "--dry-run", action="store_true", help="print the plan (every stage's) and check it, without reading weights"
    )
    merge.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    merge.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    merge.add_argument(
        "--intermediate-dir",
        metavar="DIR",
        help="multi-stage recipes: keep each stage's output in DIR/NAME "
        "(default: a temporary directory, deleted once no later stage reads it)",
    )
    merge.add_argument(
        "--push-stage",
        action="append",
        default=[],
        metavar="NAME=REPO",
        help="multi-stage recipes: also push stage NAME's output to REPO, with its own card (repeatable)",
    )
    _output_options(merge)

    moe = commands.add_parser("moe", help="assemble a mixture of experts from a mergekit-moe config")
    moe.add_argument("recipe", metavar="config", help="mergekit-moe YAML config")
    moe.add_argument("out", nargs="?", help="output directory (not needed with --dry-run)")
    moe.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and check it, without reading weights or running the base",
    )
    moe.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    moe.add_argument(
        "--device", default="cpu", help="where experts' tensors are copied: cpu, cuda, cuda:N or auto (default: cpu)"
    )
    moe.add_argument(
        "--gate-device",
        default="auto",
        help="where the base runs over the prompts (default: auto, a GPU when there is one)",
    )
    moe.add_argument(
        "--no-prompt-cache",
        action="store_true",
        help="recompute the prompts' hidden states instead of reusing cached ones",
    )
    moe.add_argument(
        "--i-understand-this-is-not-useful-without-training",
        dest="allow_all_same",
        action="store_true",
        help="accept experts that are all one model (mergekit-moe's flag)",
    )
    _output_options(moe)

    extract = commands.add_parser(
        "extract-lora", help="extract a LoRA adapter from a fine-tune (mergekit-extract-lora's options)"
    )
    extract.add_argument(
        "out", nargs="?", help="output directory for the adapter (not needed with --dry-run or --push)"
    )
    extract.add_argument("--base", help="the base model: a directory or Hub repo (org/name[@revision])")
    extract.add_argument("--base-model", dest="base", help=argparse.SUPPRESS)  # mergekit-extract-lora's spelling
    extract.add_argument(
        "--model", help="the fine-tune: a directory or Hub repo (org/name[@revision], or model+adapter)"
    )
    extract.add_argument(
        "--from", dest="spec", metavar="FILE", help="take base, model and options from an extraction file"
    )
    extract.add_argument(
        "--rank", "--max-rank", dest="rank", type=int, help="the largest rank of a module (mergekit: --max-rank)"
    )
    extract.add_argument(
        "--rank-energy",
        type=float,
        help="per module, the smallest rank (at most --rank) keeping this fraction of the delta's energy",
    )
    extract.add_argument(
        "--sv-epsilon", type=float, default=0.0, help="drop singular values at or below this (default: 0)"
    )
    extract.add_argument(
        "--distribute-scale",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="split the singular values between A and B (default), or put them in A",
    )
    extract.add_argument(
        "--embed-lora",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="extract the embeddings as LoRA too (default: save them whole)",
    )
    extract.add_argument(
        "--save-module", action="append", default=[], metavar="NAME", help="save this module whole (repeatable)"
    )
    extract.add_argument(
        "-i",
        "--include-regex",
        action="append",
        default=[],
        metavar="REGEX",
        help="extract only modules matching (repeatable)",
    )
    extract.add_argument(
        "-e",
        "--exclude-regex",
        action="append",
        default=[],
        metavar="REGEX",
        help="leave out modules matching (repeatable)",
    )
    extract.add_argument(
        "--skip-undecomposable",
        action="store_true",
        help="leave out modules that are not matrices (default: save whole)",
    )
    extract.add_argument(
        "--svd",
        choices=("exact", "randomized"),
        default="exact",
        help="exact (torch.linalg.svd, as mergekit) or randomized",
    )
    extract.add_argument("--dry-run", action="store_true", help="print the plan and check it, without reading weights")
    extract.add_argument("--push", metavar="REPO", help="push the adapter to this Hub repo (`name` or `user/name`)")
    extract.add_argument("--private", action="store_true", help="with --push: create the repo private")
    extract.add_argument(
        "--force", action="store_true", help="with --push: push into an existing repo mergehub did not make"
    )
    extract.add_argument("--overwrite", action="store_true", help="replace a previous adapter in OUT")
    extract.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    extract.add_argument("--cache-dir", help="keep tensors streamed from the Hub here, for later runs")
    extract.add_argument("--no-progress", action="store_true", help="no progress bar")

    export = commands.add_parser("gguf", help="write a model (directory or Hub repo, streamed) as GGUF files")
    export.add_argument("model", help="a model directory or Hub repo (org/name[@revision])")
    export.add_argument("out", help="output directory for the GGUF files and their card")
    export.add_argument(
        "--types", required=True, help="comma-separated GGUF types: f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0"
    )
    export.add_argument("--name", help="file name prefix and general.name (default: the model's name)")
    export.add_argument(
        "--push", nargs="?", const="", metavar="REPO", help="push the files to a Hub repo (default: your NAME-GGUF)"
    )
    export.add_argument("--private", action="store_true", help="with --push: create the repo private")
    export.add_argument(
        "--force", action="store_true", help="with --push: push into an existing repo mergehub did not make"
    )
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    export.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    export.add_argument("--cache-dir", help="keep tensors streamed from the Hub here, for later runs")
    export.add_argument("--no-progress", action="store_true", help="no progress bar")

    scores = commands.add_parser("eval", help="score a model with lm-eval")
    scores.add_argument("model", help="a model directory or Hub repo (org/name[@revision])")
    scores.add_argument("--tasks", required=True, help="comma-separated lm-eval task names or task YAML paths")
    scores.add_argument("--limit", type=float, help="items per task (a fraction when below 1)")
    scores.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    scores.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    scores.add_argument("--seed", type=int, default=0)
    scores.add_argument("--parents", help="comma-separated models to compare with, on the same tasks and settings")
    scores.add_argument("--json", action="store_true", help="print the report as JSON")
    where = scores.add_mutually_exclusive_group()
    where.add_argument("--write-card", action="store_true", help="add the scores to MODEL/README.md")
    where.add_argument(
        "--push-card", action="store_true", help="add the scores to the Hub repo's card (a PR unless you own it)"
    )

    card = commands.add_parser("card", help="write the model card of a merge (directory or Hub repo)")
    card.add_argument("target", help="a merged model directory, or a Hub repo made by mergehub or mergekit")
    card.add_argument(
        "--push", action="store_true", help="commit the card to the repo (a pull request unless you own it)"
    )
    card.add_argument("--seed", type=int, default=0, help="the seed the merge used (default: 0)")

    family = commands.add_parser("lineage", help="show the family tree of a Hub model")
    family.add_argument("repo_id")
    family.add_argument("--format", choices=("tree", "mermaid", "json"), default="tree")
    family.add_argument("--depth", type=int, default=5, help="generations to walk up (default: 5)")

    space = commands.add_parser("space", help="the mergehub Space (web app)")
    space_commands = space.add_subparsers(dest="space_command", required=True)
    deploy = space_commands.add_parser(
        "deploy", help="create or update a Space with the app and a wheel of this checkout; prints its URL"
    )
    deploy.add_argument("space_id", metavar="USER/SPACE")
    deploy.add_argument("--hardware", help="request this hardware, e.g. cpu-upgrade, t4-small, zero-a10g")
    deploy.add_argument("--private", action="store_true", help="create the Space private")

    experiments.add_commands(commands)
    workflow.add_commands(commands)
    commands.add_parser("methods", help="list the merge methods")
    return parser


def _output_options(command: argparse.ArgumentParser) -> None:
    """The options `merge` and `moe` share: output shards, seed, progress, Hub push, scores, strictness, GGUF."""
    command.add_argument("--out-shard-size", type=parse_size, default="5GB", help="largest output shard (default: 5GB)")
    command.add_argument("--seed", type=int, default=0, help="seed for random methods and random gates (default: 0)")
    command.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.add_argument("--cache-dir", help="keep tensors streamed from the Hub here, for later runs")
    command.add_argument("--push", metavar="REPO", help="push the result to this Hub repo (`name` or `user/name`)")
    command.add_argument("--private", action="store_true", help="with --push: create the repo private")
    command.add_argument(
        "--force", action="store_true", help="with --push: push into an existing repo mergehub did not make"
    )
    command.add_argument("--eval", metavar="TASKS", help="score the merge with lm-eval on these comma-separated tasks")
    command.add_argument(
        "--eval-parents", action="store_true", help="with --eval: score each parent too (or reuse their cards' scores)"
    )
    command.add_argument("--eval-limit", type=float, help="with --eval: items per task (a fraction when below 1)")
    command.add_argument(
        "--strict",
        action="store_true",
        help="warnings become errors: keys or parameters the recipe sets that would be "
        "ignored, NaN or Inf in an input or the output",
    )
    command.add_argument(
        "--gguf", metavar="TYPES", help="also write GGUF files of these comma-separated types (f16,q8_0,q4_0...)"
    )
    command.add_argument("--gguf-dir", metavar="DIR", help="with --gguf: where the GGUF files go (default: OUT-GGUF)")
    command.add_argument(
        "--gguf-repo", metavar="REPO", help="with --gguf and --push: the GGUF repo (default: REPO-GGUF)"
    )


class _ProgressBar:
    """A tqdm bar over input bytes, created on the first progress report (which carries the totals)."""

    def __init__(self, desc: str = "merging") -> None:
        self.bar = None
        self.desc = desc

    def __call__(self, progress: api.Progress) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=progress.bytes_total,
                unit="B",
                unit_scale=True,
                unit_divisor=1000,
                desc=self.desc,
                dynamic_ncols=True,
            )
        self.bar.update(progress.bytes_read - self.bar.n)
        self.bar.set_postfix_str(f"{progress.tensors_done}/{progress.tensors_total} tensors", refresh=False)

    def stage(self, name: str) -> None:
        """A multi-stage recipe's next stage: a bar of its own."""
        self.close()
        self.bar, self.desc = None, f"stage {name}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report_warnings(warnings: Sequence[RecipeWarning]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _dry_run(args: argparse.Namespace, allow_all_same: bool = False) -> int:
    """Print the plan (every stage's, for a multi-stage recipe) without reading a weight."""
    from mergehub import api  # on first use: `mergehub --help` does not load torch

    settings = dict(out_shard_bytes=args.out_shard_size, seed=args.seed, strict=args.strict)
    if api.is_multi_stage_recipe(args.recipe):
        plans = api.plan_stages(args.recipe, push_stages=_stage_repos(getattr(args, "push_stage", [])), **settings)
    elif getattr(args, "push_stage", None):
        raise MergehubError(
            "Only a multi-stage recipe has intermediate stages to push.",
            hint="Leave out --push-stage, or write the recipe as several YAML documents.",
        )
    else:
        plans = [(None, api.plan_merge(args.recipe, allow_all_same=allow_all_same, **settings))]
    if args.json:
        print(plans[-1][1].to_json())  # the final plan records every stage
    else:
        for name, plan in plans:
            if len(plans) > 1:
                print(f"== Stage {name} ==" if name else "== Final stage ==")
            print(plan.describe())
    warnings = len(plans[-1][1].warnings) + sum(len(plan.warnings) for _, plan in plans[:-1])
    ignored = f"; {warnings} warning(s): what they name is ignored, as mergekit ignores it" if warnings else ""
    stages = f" in {len(plans)} stages" if len(plans) > 1 else ""
    print(f"Plan OK: no problems found{stages}{ignored}.", file=sys.stderr)
    return 0


def _moe(args: argparse.Namespace) -> int:
    from mergehub import api  # on first use: `mergehub --help` does not load torch

    if not api.is_moe_config(args.recipe):
        raise MergehubError(
            f"{args.recipe} is not a mergekit-moe config (it has no `experts:`, or has a `merge_method:`).",
            hint="Run merge recipes with `mergehub merge`.",
        )
    return _merge(
        args, gate_device=args.gate_device, prompt_cache=not args.no_prompt_cache, allow_all_same=args.allow_all_same
    )


def _stage_repos(values: Sequence[str]) -> dict[str, str]:
    """`--push-stage NAME=REPO` values as {name: repo}."""
    repos = {}
    for value in values:
        name, sep, repo = value.partition("=")
        if not sep or not name.strip() or not repo.strip():
            raise MergehubError(
                f"--push-stage {value!r}: expected NAME=REPO.", hint="For example `--push-stage pair-a=my-pair-a`."
            )
        repos[name.strip()] = repo.strip()
    return repos


def _merge(args: argparse.Namespace, **extra: object) -> int:
    from mergehub import api  # on first use: `mergehub --help` does not load torch

    if args.dry_run:
        return _dry_run(args, allow_all_same=bool(extra.get("allow_all_same")))
    if not args.out and not args.push:
        raise MergehubError(
            "No output directory given.",
            hint=f"Run `mergehub {args.command} RECIPE OUT_DIR`, add --push REPO, or --dry-run.",
        )
    if getattr(args, "intermediate_dir", None):
        extra["intermediate_dir"] = args.intermediate_dir
    if getattr(args, "push_stage", None):
        extra.update(push_stages=_stage_repos(args.push_stage), push_private=args.private)
    bar = None if args.no_progress else _ProgressBar()
    if bar is not None and args.command == "merge":
        extra["on_stage"] = bar.stage
    options = dict(
        device=args.device,
        seed=args.seed,
        out_shard_bytes=args.out_shard_size,
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
        on_progress=bar,
        strict=args.strict,
        **extra,
    )
    if args.gguf:
        options.update(gguf_types=api.gguf_types(args.gguf), gguf_dir=args.gguf_dir)
    tasks = _tasks(args.eval)
    evaluation = {"parents": args.eval_parents, "limit": args.eval_limit, "device": args.device}
    try:
        if args.push:
            result, pushed = api.push_merge(
                args.recipe,
                args.push,
                out_dir=args.out,
                private=args.private,
                force=args.force,
                eval_tasks=tasks,
                eval_options=evaluation,
                gguf_repo=args.gguf_repo,
                **options,
            )
        else:
            result, pushed = api.run_merge(args.recipe, args.out, **options), None
    finally:
        if bar is not None:
            bar.close()
    _report_warnings(result.plan.warnings)
    print(result.summary())
    if tasks and pushed is None:
        report, comparison = api.evaluate_merge(result, tasks, **evaluation)
        print(report.table() + ("\n\n" + comparison if comparison else ""))
    for name, stage in result.stages_pushed:
        print(f"Pushed stage {name} to {stage.repo_id}: {stage.commit_url}")
    if pushed is not None:
        print(f"Pushed to {pushed.repo_id}: {pushed.commit_url}")
        if pushed.gguf is not None:
            print(f"GGUF files pushed to {pushed.gguf.repo_id}: {pushed.gguf.commit_url}")
    return 0


def _gguf(args: argparse.Namespace) -> int:
    from mergehub import api

    types = api.gguf_types(args.types)
    repo_id = None
    if args.push is not None:
        default = f"{(args.name or args.model.split('@')[0].rstrip('/').split('/')[-1])}-GGUF"
        repo_id = api.hub_repo_id(args.push or default)
    bar = None if args.no_progress else _ProgressBar("converting")
    try:
        result = api.convert_gguf(
            args.model,
            args.out,
            types,
            name=args.name,
            repo_id=repo_id,
            overwrite=args.overwrite,
            device=args.device,
            cache_dir=args.cache_dir,
            on_progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    print(result.summary())
    if repo_id is not None:
        pushed = api.push_gguf_files(result, private=args.private, force=args.force)
        print(f"Pushed to {pushed.repo_id}: {pushed.commit_url}")
    return 0


def _extraction(args: argparse.Namespace) -> tuple[str, str, api.ExtractOptions, str | None]:
    """Base, fine-tune, options and the file's text: from --from FILE, else from the flags."""
    from mergehub import api

    if args.spec:
        from mergehub import safe_yaml

        text = safe_yaml.read_text(args.spec)
        spec = api.parse_extraction(text)
        return str(spec.base), str(spec.model), spec.options, text
    missing = [
        flag for flag, value in (("--base", args.base), ("--model", args.model), ("--rank", args.rank)) if value is None
    ]
    if missing:
        raise MergehubError(
            f"extract-lora needs {', '.join(missing)}.",
            hint="Run `mergehub extract-lora --base BASE --model FINETUNE OUT --rank R` (with --rank-energy, "
            "--rank is the largest rank a module may get).",
        )
    options = api.ExtractOptions(
        rank=args.rank,
        rank_energy=args.rank_energy,
        sv_epsilon=args.sv_epsilon,
        distribute_scale=args.distribute_scale,
        embed_lora=args.embed_lora,
        save_modules=tuple(args.save_module),
        include=tuple(args.include_regex),
        exclude=tuple(args.exclude_regex),
        skip_undecomposable=args.skip_undecomposable,
        svd=args.svd,
    )
    return args.base, args.model, options, None


def _extract(args: argparse.Namespace) -> int:
    from mergehub import api

    base, model, options, text = _extraction(args)
    if args.dry_run:
        print(api.plan_extraction(base, model, options).describe())
        print("Plan OK: no problems found.", file=sys.stderr)
        return 0
    if not args.out and not args.push:
        raise MergehubError("No output directory given.", hint="Give OUT, add --push REPO, or --dry-run.")
    bar = None if args.no_progress else _ProgressBar("extracting")
    kwargs = dict(device=args.device, cache_dir=args.cache_dir, on_progress=bar, spec_text=text)
    try:
        if args.push:
            result, pushed = api.push_extraction(
                base,
                model,
                args.push,
                options,
                out_dir=args.out,
                private=args.private,
                force=args.force,
                overwrite=args.overwrite,
                **kwargs,
            )
        else:
            result, pushed = api.extract_lora(base, model, args.out, options, overwrite=args.overwrite, **kwargs), None
    finally:
        if bar is not None:
            bar.close()
    print(result.summary())
    if pushed is not None:
        print(f"Pushed to {pushed.repo_id}: {pushed.commit_url}")
    return 0


def _methods() -> int:
    from mergehub.methods import all_methods

    for name, spec in sorted(all_methods().items()):
        params = ", ".join(p.name + ("" if p.required else f"={p.default}") for p in spec.params)
        print(f"{name:18} {spec.summary}  [{params}]")
    return 0


def _tasks(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _eval(args: argparse.Namespace) -> int:
    from mergehub import api

    options = {"limit": args.limit, "num_fewshot": args.num_fewshot, "device": args.device, "seed": args.seed}
    tasks = _tasks(args.tasks)
    report, comparison = api.score(args.model, tasks, parents=_tasks(args.parents), **options)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.table())
    if comparison:
        print("\n" + comparison)
    if args.write_card:
        _write_card(Path(args.model), api.card_with_scores(args.model, report, comparison))
    elif args.push_card:
        print(
            "Card pushed: "
            f"{api.push_card(args.model.split('@')[0], api.card_with_scores(args.model, report, comparison))}"
        )
    return 0


def _card(args: argparse.Namespace) -> int:
    from mergehub import api

    card = api.build_card(args.target, seed=args.seed)
    if args.push:
        print(f"Card pushed: {api.push_card(args.target, card)}")
    elif Path(args.target).is_dir():
        _write_card(Path(args.target), card)
    else:
        print(card)
    return 0


def _write_card(directory: Path, card: object) -> None:
    from mergehub.writer import writing

    with writing(directory / "README.md"):
        (directory / "README.md").write_text(str(card), encoding="utf-8")
    print(f"Wrote {directory / 'README.md'}")


def _lineage(args: argparse.Namespace) -> int:
    from mergehub import api

    graph = api.lineage(args.repo_id, max_depth=args.depth)
    print({"tree": graph.to_tree, "mermaid": graph.to_mermaid, "json": graph.to_json}[args.format]())
    return 0


def _report(error: MergehubError, args: argparse.Namespace) -> None:
    """The error's message, where it is in the recipe (`recipe.yml:7 (models[1].model)`), and its hint."""
    print(f"error: {error.message}", file=sys.stderr)
    if error.line is not None and getattr(args, "recipe", None):
        print(f"  at {args.recipe}:{error.line}" + (f" ({error.location})" if error.location else ""), file=sys.stderr)
    if error.hint:
        print(f"hint: {error.hint}", file=sys.stderr)


def _space(args: argparse.Namespace) -> int:
    from mergehub.interfaces.space.deploy import deploy_space

    deployed = deploy_space(args.space_id, hardware=args.hardware, private=args.private)
    print(f"{'Created' if deployed.created else 'Updated'} {deployed.space_id} with {', '.join(deployed.files)}.")
    if args.hardware:
        print(f"Requested hardware: {args.hardware}.")
    print(deployed.url)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (see the module's docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        with stop_on_signals():
            commands = {
                "merge": _merge,
                "moe": _moe,
                "gguf": _gguf,
                "eval": _eval,
                "card": _card,
                "lineage": _lineage,
                "extract-lora": _extract,
                "space": _space,
                **experiments.COMMANDS,
                **workflow.COMMANDS,
            }
            return commands[args.command](args) if args.command in commands else _methods()
    except MergehubError as e:
        if args.debug:
            raise
        _report(e, args)
        return 1
    except KeyboardInterrupt as e:
        print(
            f"{'terminated' if isinstance(e, Terminated) else 'interrupted'}: stopped and cleaned up; no "
            "output was left behind.",
            file=sys.stderr,
        )
        return exit_code(e)
    except Exception as e:  # noqa: BLE001 - anything else is a bug: say so, and how to see the traceback
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        print(
            "this is a bug in mergehub: please report it with the traceback that this command prints:", file=sys.stderr
        )
        print(f"  mergehub --debug {shlex.join(a for a in argv if a != '--debug')}", file=sys.stderr)
        return BUG_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
