"""Benchmark LoRA both ways against mergekit 0.1.5, on bench_merge.py's TinyLlama-1.1B-shaped bfloat16 models.

1. **`model+adapter` in a recipe.** A linear merge of `base+adapter` and a fine-tune, `dtype: bfloat16`, the adapter a
   PEFT LoRA of rank `--adapter-rank` on every linear module (written directly in PEFT's format, random A and B).
   mergehub applies the adapter per tensor as it streams; `mergekit-yaml --lora-merge-cache DIR` first loads the base
   with transformers, merges the adapter with peft and saves the merged copy to DIR.
2. **Extraction.** `mergehub extract-lora --base BASE --model FINETUNE OUT --rank R` against
   `mergekit-extract-lora --base-model BASE --model FINETUNE --out-path OUT --max-rank R` (exact SVD in both; add
   `--randomized` for a row with mergehub's randomized SVD).

Each command is a child process; wall time, CPU time and peak RSS come from `os.wait4` (bench_merge.py's launcher),
on a warm page cache. "Disk" is what a run leaves on disk: its output, plus mergekit's LoRA merge cache (a whole
merged model) for the recipe. Outputs are compared: the merges tensor by tensor (max abs difference), the adapters by
each module's relative reconstruction error ‖delta − B·A‖ / ‖delta‖ (mean and max over modules, and the largest
difference between the two tools' errors). Results go to bench/results/bench_lora-<time>.json and a Markdown table.

    .venv/bin/python bench/bench_lora.py --workdir /tmp/mergehub-bench            # 1.1B models, kept between runs
    .venv/bin/python bench/bench_lora.py --workdir /tmp/mergehub-bench --rank 64 --adapter-rank 16 --randomized
    .venv/bin/python bench/bench_lora.py --small                                   # tiny models: a smoke test
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_merge import (  # noqa: E402
    RESULTS_DIR,
    SMALL_SHAPE,
    ChildRun,
    LlamaShape,
    compare_outputs,
    ensure_models,
    iter_output_tensors,
    run_child,
    source_state,
    warm_cache,
)

RECIPE = """\
merge_method: linear
models:
  - model: {base}+{adapter}
    parameters: {{weight: 0.5}}
  - model: {other}
    parameters: {{weight: 0.5}}
dtype: bfloat16
"""
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapter(directory: Path, shape: LlamaShape, rank: int) -> Path:
    """A PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors) on every linear module, bfloat16, seeded."""
    if (directory / "adapter_model.safetensors").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(1234)
    tensors = {}
    for name, dims in shape.tensors():
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] in LINEAR:
            out_features, in_features = dims
            tensors[f"base_model.model.{module}.lora_A.weight"] = (
                torch.randn(rank, in_features, generator=generator) / in_features**0.5
            ).bfloat16()
            tensors[f"base_model.model.{module}.lora_B.weight"] = (
                torch.randn(out_features, rank, generator=generator) * 0.002
            ).bfloat16()
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(LINEAR),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=1))
    return directory


def disk_bytes(*paths: Path) -> int:
    """Bytes of every file under these paths."""
    return sum(p.stat().st_size for path in paths if path.exists() for p in path.rglob("*") if p.is_file())


def reconstruction_errors(adapter: Path, base: Path, model: Path) -> dict[str, float]:
    """Each LoRA module's ‖delta − B·A‖ / ‖delta‖ of an extracted adapter (scaling 1), computed in float32."""
    files, tuned = dict(iter_output_tensors(base)), dict(iter_output_tensors(model))
    errors = {}
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():  # noqa: SIM118
            if ".lora_A." not in key:
                continue
            module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
            a, b = f.get_tensor(key).float(), f.get_tensor(key.replace("lora_A", "lora_B")).float()
            name = f"{module}.weight"
            with safe_open(str(files[name]), "pt") as fb, safe_open(str(tuned[name]), "pt") as ft:
                delta = ft.get_tensor(name).float() - fb.get_tensor(name).float()
            errors[module] = float((delta - b @ a).norm() / delta.norm())
    return errors


@dataclass
class Row:
    """One tool's run of one direction."""

    direction: str
    tool: str
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    disk_bytes: int
    others_cores: float | None
    log: str
    agreement: str = ""


def _row(direction: str, tool: str, run: ChildRun, disk: int) -> Row:
    if run.returncode != 0:
        raise SystemExit(f"{direction} / {tool} failed (exit {run.returncode}): see {run.log}")
    return Row(direction, tool, run.seconds, run.cpu_seconds, run.peak_rss_bytes, disk, run.others_cores, run.log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="keep generated models here (default: a temporary directory)")
    parser.add_argument("--small", action="store_true", help="tiny models: a smoke test of the script")
    parser.add_argument("--rank", type=int, default=32, help="extraction rank (default: 32)")
    parser.add_argument("--adapter-rank", type=int, default=16, help="rank of the adapter in the recipe (default: 16)")
    parser.add_argument("--randomized", action="store_true", help="also extract with mergehub's randomized SVD")
    parser.add_argument("--no-mergekit", action="store_true", help="mergehub only")
    parser.add_argument("--json", type=Path, help="where to write the results (default: bench/results/)")
    args = parser.parse_args(argv)

    shape = SMALL_SHAPE if args.small else LlamaShape()
    scratch = tempfile.TemporaryDirectory(prefix="mergehub-bench-lora-")
    root = args.workdir or Path(scratch.name)
    print(f"Models ({shape.parameters / 1e9:.2f} B parameters) in {root}", flush=True)
    base, other, _ = ensure_models(root / "models", shape, noise=0.01, shard_bytes=2**30 if not args.small else 2**20)
    adapter = make_adapter(root / "models" / f"lora-r{args.adapter_rank}", shape, args.adapter_rank)
    out, logs = root / "lora-out", root / "lora-logs"
    logs.mkdir(exist_ok=True)
    python = sys.executable
    mergekit_yaml = Path(python).parent / "mergekit-yaml"
    mergekit_extract = Path(python).parent / "mergekit-extract-lora"
    with_mergekit = not args.no_mergekit and mergekit_yaml.is_file() and mergekit_extract.is_file()
    rows: list[Row] = []

    def fresh() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        warm_cache([base, other, adapter])

    # 1. a recipe with one `+adapter` reference
    recipe = root / "lora-recipe.yml"
    recipe.write_text(RECIPE.format(base=base, adapter=adapter, other=other))
    fresh()
    run = run_child(
        [python, "-m", "mergehub", "merge", str(recipe), str(out / "mergehub"), "--no-progress"],
        logs / "merge-mergehub.log",
    )
    rows.append(_row("recipe with base+adapter", "mergehub", run, disk_bytes(out / "mergehub")))
    if with_mergekit:
        run = run_child(
            [str(mergekit_yaml), str(recipe), str(out / "mergekit"), "--lora-merge-cache", str(out / "lora-cache")],
            logs / "merge-mergekit.log",
        )
        rows.append(_row("recipe with base+adapter", "mergekit", run, disk_bytes(out / "mergekit", out / "lora-cache")))
        comparison = compare_outputs(out / "mergehub", out / "mergekit")
        rows[-1].agreement = f"max abs diff {comparison.max_abs_diff:.3g} over {comparison.tensors} tensors"
    # 2. extraction
    fresh()

    def mergehub_extract(directory: Path, *extra: str) -> list[str]:
        return [
            python,
            "-m",
            "mergehub",
            "extract-lora",
            "--base",
            str(base),
            "--model",
            str(other),
            str(directory),
            "--rank",
            str(args.rank),
            "--no-progress",
            *extra,
        ]

    extractions = [("mergehub", out / "mergehub-lora", mergehub_extract(out / "mergehub-lora"))]
    if args.randomized:
        directory = out / "mergehub-lora-randomized"
        extractions.append(("mergehub (randomized SVD)", directory, mergehub_extract(directory, "--svd", "randomized")))
    if with_mergekit:
        extractions.append(
            (
                "mergekit",
                out / "mergekit-lora",
                [
                    str(mergekit_extract),
                    "--base-model",
                    str(base),
                    "--model",
                    str(other),
                    "--out-path",
                    str(out / "mergekit-lora"),
                    "--max-rank",
                    str(args.rank),
                ],
            )
        )
    errors = {}
    for tool, directory, command in extractions:
        warm_cache([base, other])
        run = run_child(command, logs / f"extract-{directory.name}.log")
        rows.append(_row(f"extract-lora rank {args.rank}", tool, run, disk_bytes(directory)))
        errors[tool] = reconstruction_errors(directory, base, other)
        values = list(errors[tool].values())
        rows[-1].agreement = f"relative error mean {sum(values) / len(values):.4g}, max {max(values):.4g}"
    if "mergekit" in errors:
        for tool in [t for t in errors if t != "mergekit"]:
            worst = max(abs(e - errors["mergekit"][m]) / errors["mergekit"][m] for m, e in errors[tool].items())
            next(
                r for r in rows if r.tool == tool and r.direction.startswith("extract")
            ).agreement += f"; vs mergekit ≤ {worst:.2g} relative"
    shutil.rmtree(out, ignore_errors=True)

    print("\n| direction | tool | s | × mergekit | peak RSS GiB | × mergekit | disk GB | others' cores | agreement |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        reference = next((r for r in rows if r.direction == row.direction and r.tool == "mergekit"), None)
        times = f"{row.seconds / reference.seconds:.2f}" if reference else "—"
        memory = f"{row.peak_rss_bytes / reference.peak_rss_bytes:.2f}" if reference else "—"
        busy = f"{row.others_cores:.2f}" if row.others_cores is not None else "?"
        print(
            f"| {row.direction} | {row.tool} | {row.seconds:.1f} | {times} | "
            f"{row.peak_rss_bytes / 2**30:.2f} | {memory} | "
            f"{row.disk_bytes / 1e9:.3f} | {busy} | {row.agreement} |"
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    path = args.json or RESULTS_DIR / f"bench_lora-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "shape": asdict(shape),
                "rank": args.rank,
                "adapter_rank": args.adapter_rank,
                "rows": [asdict(r) for r in rows],
                "errors": errors,
                "source": source_state(),
            },
            indent=1,
        )
    )
    print(f"\nResults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
