"""Benchmark start-up: `mergehub --help` and `mergehub merge RECIPE OUT --dry-run` against `mergekit-yaml --help`.

A user waits for these before anything is merged: the CLI's help, and the plan checked from headers alone. The
dry run plans a linear merge of bench_merge.py's three models (`--medium` or the 1.1B shape with `--workdir`; the
small shape by default: planning reads headers only, so the model size matters little). Each command runs
`--repeats` times as a child process, one after the other; the table gives the median and fastest wall time and
each median's ratio to `mergekit-yaml --help` (the target is ≤ 0.5).

    .venv/bin/python bench/bench_startup.py                                  # small models in a temporary dir
    .venv/bin/python bench/bench_startup.py --workdir /tmp/mergehub-bench     # the 1.1B models, kept
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_merge import (  # noqa: E402  (the benchmarks are scripts beside each other)
    MEDIUM_SHAPE,
    SMALL_SHAPE,
    LlamaShape,
    ensure_models,
    find_mergekit,
    run_child,
)

RECIPE = """\
merge_method: linear
models:
  - {{model: {0}, parameters: {{weight: 0.5}}}}
  - {{model: {1}, parameters: {{weight: 0.3}}}}
  - {{model: {2}, parameters: {{weight: 0.2}}}}
dtype: bfloat16
"""


def time_command(command: Sequence[str], logs: Path, label: str, repeats: int) -> list[float]:
    """Wall seconds of `repeats` runs of `command`, each checked to exit 0."""
    seconds = []
    for attempt in range(repeats):
        run = run_child(command, logs / f"{label}-{attempt}.log")
        if run.returncode != 0:
            raise SystemExit(f"{label} failed with exit {run.returncode}: see {run.log}")
        seconds.append(run.seconds)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """Time the three commands and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="keep the models here (default: a temporary directory)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--medium", action="store_true", help="~112M-parameter models")
    size.add_argument("--large", action="store_true", help="the 1.1B models (the default with --workdir)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (default: 5)")
    args = parser.parse_args(argv)
    mergekit = find_mergekit()
    if mergekit is None:
        print("error: mergekit-yaml is not installed (pip install mergekit==0.1.5).", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        shape, folder = SMALL_SHAPE, "models-small"
        if args.medium:
            shape, folder = MEDIUM_SHAPE, "models-medium"
        elif args.large or args.workdir:
            shape, folder = LlamaShape(), "models"
        models = ensure_models(root / folder, shape, noise=0.01, shard_bytes=1_000_000_000)
        recipe, logs = Path(scratch) / "linear.yml", Path(scratch)
        recipe.write_text(RECIPE.format(*models))
        mergehub = str(Path(sys.executable).parent / "mergehub")
        commands = {
            "mergekit-yaml --help": [mergekit, "--help"],
            "mergehub --help": [mergehub, "--help"],
            "mergehub merge --dry-run": [mergehub, "merge", str(recipe), str(Path(scratch) / "out"), "--dry-run"],
        }
        times = {
            label: time_command(c, logs, label.split()[0] + str(i), args.repeats)
            for i, (label, c) in enumerate(commands.items())
        }
    reference = statistics.median(times["mergekit-yaml --help"])
    print(f"\n{args.repeats} runs each, {shape.parameters / 1e6:.0f}M-parameter models\n")
    print("| command | median s | fastest s | median / mergekit-yaml --help |")
    print("|---|---|---|---|")
    for label, seconds in times.items():
        median = statistics.median(seconds)
        print(f"| `{label}` | {median:.2f} | {min(seconds):.2f} | {median / reference:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
