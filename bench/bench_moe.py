"""Benchmark: MoE assembly against `mergekit-moe`, and a multi-stage recipe against `mergekit-multi`.

On TinyLlama-1.1B-shaped bf16 models generated as in bench_merge.py (a base and `--experts` fine-tunes, each
given a small word-level tokenizer so that the prompts can be tokenised):

1. **MoE**: a mergekit-moe config (the base, 4 experts with distinct positive prompts, `gate_mode: hidden` by
   default, 2 experts per token) run by `mergehub moe CONFIG OUT` and by `mergekit-moe CONFIG OUT`, the base run
   over the prompts on the CPU by both (`--gate-device cuda` for both on a GPU). mergehub's prompt-state cache is
   off (`--no-prompt-cache`), so both compute the gates. Outputs are compared tensor by tensor after mapping
   mergekit's fused expert layout (`mlp.experts.gate_up_proj`) onto the checkpoint layout mergehub writes.
2. **Multi-stage**: two SLERPs of the base with experts 1 and 2, then TIES of both with expert 3, run by
   `mergehub merge MULTI OUT` (intermediates in a temporary directory beside OUT, each deleted after its last
   use) and by `mergekit-multi MULTI --out-path OUT -I DIR` (intermediates kept in DIR, as it always does).
   The peak bytes on disk of each tool's run directory (output plus intermediates) are sampled every 50 ms.

Each run is a child process; wall time and peak RSS come from `os.wait4` (see bench_merge.py's launcher), after
the inputs are read once into the page cache. Results go to bench/results/bench_moe-<time>.json and a Markdown
table on stdout.

    .venv/bin/python bench/bench_moe.py --workdir /tmp/mergehub-bench      # 1.1B experts, models kept
    .venv/bin/python bench/bench_moe.py --small                            # tiny shape: a smoke test
    .venv/bin/python bench/bench_moe.py --gate-mode cheap_embed --only moe
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_merge import (
    READY_MARKER,
    RESULTS_DIR,
    SMALL_SHAPE,
    Comparison,
    LlamaShape,
    ToolResult,
    _describe,
    _parse_size,
    compare_outputs,
    generate_model,
    input_bytes,
    iter_output_tensors,
    run_tool,
    source_state,
    warm_cache,
)

GiB = 2**30
PROMPT_WORDS = 6
"""Words per prompt; each expert gets two prompts of distinct words."""


# --------------------------------------------------------------------------- models


def write_tokenizer(directory: Path, vocab: int) -> None:
    """A word-level tokenizer of `vocab` tokens (`<unk>`, `<s>`, `</s>`, `<pad>`, then `w0`, `w1`...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(vocab - 4)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(directory)


def ensure_experts(root: Path, shape: LlamaShape, count: int, *, noise: float, shard_bytes: int) -> list[Path]:
    """The base and `count` fine-tunes under `root`, with tokenizers, generated unless a previous run made them."""
    paths = []
    for index in range(count + 1):
        directory = root / ("base" if index == 0 else f"expert-{index}")
        marker = directory / READY_MARKER
        wanted = json.dumps({"shape": asdict(shape), "noise": noise, "shard_bytes": shard_bytes}, sort_keys=True)
        if not (marker.is_file() and marker.read_text() == wanted):
            shutil.rmtree(directory, ignore_errors=True)
            started = time.perf_counter()
            generate_model(directory, index, shape, noise=noise, shard_bytes=shard_bytes)
            write_tokenizer(directory, shape.vocab)
            marker.write_text(wanted)
            print(f"  {directory.name}: generated in {time.perf_counter() - started:.1f} s", flush=True)
        paths.append(directory)
    return paths


# --------------------------------------------------------------------------- recipes


def moe_config(paths: Sequence[Path], gate_mode: str, per_token: int) -> str:
    """A mergekit-moe config: the base and every fine-tune as an expert, each with its own prompts."""
    lines = [f"base_model: {paths[0]}", f"gate_mode: {gate_mode}", "dtype: bfloat16", f"experts_per_token: {per_token}"]
    lines.append("experts:")
    for i, path in enumerate(paths[1:]):
        first = 2 * PROMPT_WORDS * i
        prompts = [
            " ".join(f"w{first + j}" for j in range(PROMPT_WORDS)),
            " ".join(f"w{first + PROMPT_WORDS + j}" for j in range(PROMPT_WORDS)),
        ]
        lines += [f"  - source_model: {path}", f"    positive_prompts: {json.dumps(prompts)}"]
    return "\n".join(lines) + "\n"


ISSUE_EXAMPLE = """\
name: pair-a
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {one}
parameters:
  t: [0.2, 0.5, 0.8]
dtype: bfloat16
---
name: pair-b
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {two}
parameters:
  t: 0.6
dtype: bfloat16
---
merge_method: ties
base_model: {base}
models:
  - model: pair-a
    parameters: {{weight: 0.5, density: 0.7}}
  - model: pair-b
    parameters: {{weight: 0.3, density: 0.5}}
  - model: {three}
    parameters: {{weight: 0.2, density: 0.9}}
dtype: bfloat16
"""


CHAIN = """\
name: first
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {one}
parameters:
  t: 0.5
dtype: bfloat16
---
name: second
merge_method: ties
base_model: {base}
models:
  - model: first
    parameters: {{weight: 0.6, density: 0.7}}
  - model: {two}
    parameters: {{weight: 0.4, density: 0.5}}
dtype: bfloat16
---
merge_method: linear
models:
  - model: second
    parameters: {{weight: 0.7}}
  - model: {three}
    parameters: {{weight: 0.3}}
dtype: bfloat16
"""

MULTI_STAGE = {"multi-stage": ISSUE_EXAMPLE, "chain": CHAIN}
"""The issue's example (two SLERPs, then TIES of both with a third model: both intermediates are read by the last
stage), and a chain of three stages, where mergehub deletes `first` once `second` is written."""


# --------------------------------------------------------------------------- measuring


class DiskPeak:
    """The largest number of bytes allocated under a directory, sampled in a thread while a child runs."""

    def __init__(self, directory: Path, interval: float = 0.05) -> None:
        self.directory, self.interval, self.peak, self.end = directory, interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size(self) -> int:
        total = 0
        for root, _, files in os.walk(self.directory):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:  # deleted while walking
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._size())
            self._stop.wait(self.interval)

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end = self._size()
        self.peak = max(self.peak, self.end)


def compare_moe(ours: Path, theirs: Path) -> Comparison:
    """mergehub's MoE against mergekit-moe's, mergekit's fused experts split into one tensor per expert."""
    import torch
    from safetensors import safe_open

    ours_files = dict(iter_output_tensors(ours))
    names = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
    worst, worst_name, mismatched, seen = 0.0, None, 0, set()
    only_theirs = []

    def check(name: str, tensor: torch.Tensor) -> None:
        nonlocal worst, worst_name, mismatched
        if name not in ours_files:
            only_theirs.append(name)
            return
        seen.add(name)
        with safe_open(str(ours_files[name]), "pt") as f:
            mine = f.get_tensor(name)
        diff = math.inf if mine.shape != tensor.shape else (mine.float() - tensor.float()).abs().max().item()
        mismatched += diff > 0
        if worst_name is None or diff > worst:
            worst, worst_name = diff, name

    for name, path in iter_output_tensors(theirs):
        with safe_open(str(path), "pt") as f:
            tensor = f.get_tensor(name)
        if ".mlp.experts." in name:
            prefix = name.rsplit(".mlp.experts.", 1)[0] + ".block_sparse_moe.experts"
            for e, fused in enumerate(tensor):
                if name.endswith("gate_up_proj"):
                    gate, up = fused.chunk(2, dim=0)
                    check(f"{prefix}.{e}.{names['gate_proj']}.weight", gate)
                    check(f"{prefix}.{e}.{names['up_proj']}.weight", up)
                else:
                    check(f"{prefix}.{e}.{names['down_proj']}.weight", fused)
        else:
            check(name.replace(".mlp.gate.", ".block_sparse_moe.gate."), tensor)
    return Comparison(len(seen), worst, worst_name, mismatched, sorted(set(ours_files) - seen), sorted(only_theirs))


@dataclass
class Task:
    """Both tools on one task (MoE or multi-stage), with the peak disk use of each run and the comparison."""

    name: str
    recipe: str
    mergehub: ToolResult = field(default_factory=ToolResult)
    mergekit: ToolResult | None = None
    disk_peak: dict[str, int] = field(default_factory=dict)
    disk_left: dict[str, int] = field(default_factory=dict)
    """Bytes under the run directory once the tool exited: the output, and the intermediates it kept."""
    comparison: Comparison | None = None


def _run(
    task: Task, tool: str, command: list[str], run_dir: Path, out: Path, inputs: list[Path], args: argparse.Namespace
) -> ToolResult:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    print(f"[{task.name}] {tool} ...", end=" ", flush=True)
    with DiskPeak(run_dir) as disk:
        result = run_tool(
            command,
            out,
            run_dir.parent / f"{task.name}-{tool}.log",
            input_bytes(inputs),
            lambda: warm_cache(inputs),
            args.repeats,
        )
    task.disk_peak[tool], task.disk_left[tool] = disk.peak, disk.end
    print(f"{_describe(result)}, disk: peak {disk.peak / GiB:.3g} GiB, left {disk.end / GiB:.3g} GiB", flush=True)
    if result.error:
        print(f"[{task.name}] {tool} failed (exit {result.returncode}), log {result.log}:\n{result.error}", flush=True)
    return result


def _multi_stage(
    name: str, text: str, runs: Path, inputs: list[Path], shard: int, multi: str | None, args: argparse.Namespace
) -> Task:
    """A multi-stage recipe by `mergehub merge` and by `mergekit-multi` (intermediates in the run directory)."""
    task = Task(name, text)
    recipe = runs / f"{name}.yml"
    recipe.write_text(text)
    ours, theirs = runs / "mergehub" / "out", runs / "mergekit" / "out"
    command = [sys.executable, "-m", "mergehub", "merge", str(recipe), str(ours), "--no-progress"]
    task.mergehub = _run(task, "mergehub", [*command, "--out-shard-size", str(shard)], ours.parent, ours, inputs, args)
    if multi and not args.no_mergekit:
        command = [multi, str(recipe), "--out-path", str(theirs), "-I", str(theirs.parent / "intermediates")]
        command += ["--out-shard-size", str(shard), "--no-lazy"]
        task.mergekit = _run(task, "mergekit", command, theirs.parent, theirs, inputs, args)
        if not (task.mergehub.error or task.mergekit.error):
            task.comparison = compare_outputs(ours, theirs)
    return task


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _pair(values: dict[str, int], scale: float = GiB) -> str:
    return " / ".join(
        _cell(values[tool] / scale if tool in values else None, ".3g") for tool in ("mergehub", "mergekit")
    )


def markdown_table(tasks: Sequence[Task]) -> str:
    """One row per task: time, peak RSS and disk of both tools, and the largest difference of the outputs."""
    lines = [
        "| task | mergehub s | mergekit s | peak RSS GiB | peak disk GiB | left on disk GiB | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tasks:
        kit = t.mergekit or ToolResult()
        rss = {tool: r.peak_rss_bytes for tool, r in (("mergehub", t.mergehub), ("mergekit", kit)) if r.peak_rss_bytes}
        diff = "—" if t.comparison is None else f"{t.comparison.max_abs_diff:.3g} ({t.comparison.tensors} tensors)"
        lines.append(
            f"| {t.name} | {_cell(t.mergehub.seconds, '.1f')} | {_cell(kit.seconds, '.1f')} | {_pair(rss)} "
            f"| {_pair(t.disk_peak)} | {_pair(t.disk_left)} | {diff} |"
        )
    lines.append("\nEach pair of figures is mergehub / mergekit.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, help="keep models here between runs (default: a temporary directory)")
    p.add_argument("--small", action="store_true", help="small models (hidden 256, 4 layers) for a smoke test")
    p.add_argument("--experts", type=int, default=4, help="fine-tunes made experts (default: 4; at least 3)")
    p.add_argument("--gate-mode", default="hidden", help="the MoE's gate_mode (default: hidden)")
    p.add_argument("--experts-per-token", type=int, default=2, help="(default: 2)")
    p.add_argument("--gate-device", default="cpu", help="cpu or cuda: where both tools run the base (default: cpu)")
    p.add_argument("--only", choices=("moe", "multi"), help="run one task only")
    p.add_argument("--no-mergekit", action="store_true", help="run mergehub only")
    p.add_argument("--out-shard-size", default="2GB", help="output shard size for both tools (default: 2GB)")
    p.add_argument("--noise", type=float, default=0.01, help="fine-tune noise relative to the weights' std")
    p.add_argument("--repeats", type=int, default=1, help="runs per tool; the fastest counts (default: 1)")
    p.add_argument("--json", type=Path, help="where to save the JSON (default: bench/results/bench_moe-<time>.json)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the models if needed, run both tasks with both tools, print and save the table."""
    args = _parser().parse_args(argv)
    if args.experts < 3:
        print("error: --experts must be at least 3 (the multi-stage recipe reads three fine-tunes)", file=sys.stderr)
        return 2
    shape = SMALL_SHAPE if args.small else LlamaShape()
    shard = _parse_size(args.out_shard_size)
    bindir = Path(sys.executable).parent
    mergekit = {
        tool: shutil.which(tool, path=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
        for tool in ("mergekit-moe", "mergekit-multi")
    }
    temp = tempfile.TemporaryDirectory(prefix="mergehub-bench-moe-") if args.workdir is None else None
    workdir = Path(temp.name) if temp else args.workdir.resolve()
    try:
        root = workdir / ("moe-models-small" if args.small else "moe-models")
        print(
            f"Models: {shape.parameters / 1e9:.3g}B parameters each, bf16, base + {args.experts} in {root}", flush=True
        )
        paths = ensure_experts(root, shape, args.experts, noise=args.noise, shard_bytes=_parse_size("1GB"))
        runs = workdir / "moe-runs"
        runs.mkdir(exist_ok=True)
        tasks = []
        if args.only in (None, "moe"):
            text = moe_config(paths, args.gate_mode, args.experts_per_token)
            task = Task("moe", text)
            recipe = runs / "moe.yml"
            recipe.write_text(text)
            ours, theirs = runs / "mergehub" / "out", runs / "mergekit" / "out"
            command = [
                sys.executable,
                "-m",
                "mergehub",
                "moe",
                str(recipe),
                str(ours),
                "--no-progress",
                "--no-prompt-cache",
                "--gate-device",
                args.gate_device,
                "--out-shard-size",
                str(shard),
            ]
            task.mergehub = _run(task, "mergehub", command, ours.parent, ours, paths, args)
            if mergekit["mergekit-moe"] and not args.no_mergekit:
                command = [mergekit["mergekit-moe"], str(recipe), str(theirs), "--out-shard-size", str(shard)]
                command += ["--cuda"] if args.gate_device.startswith("cuda") else []
                task.mergekit = _run(task, "mergekit", command, theirs.parent, theirs, paths, args)
                if not (task.mergehub.error or task.mergekit.error):
                    task.comparison = compare_moe(ours, theirs)
            tasks.append(task)
        if args.only in (None, "multi"):
            for name, template in MULTI_STAGE.items():
                text = template.format(base=paths[0], one=paths[1], two=paths[2], three=paths[3])
                tasks.append(_multi_stage(name, text, runs, paths[:4], shard, mergekit["mergekit-multi"], args))
        for tool in ("mergehub", "mergekit"):
            shutil.rmtree(runs / tool, ignore_errors=True)
        table = markdown_table(tasks)
        print(f"\n{table}")
        payload = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cpus": os.cpu_count(),
            "models": {"shape": asdict(shape), "parameters": shape.parameters, "experts": args.experts},
            "gate_mode": args.gate_mode,
            "gate_device": args.gate_device,
            "source": source_state(),
            "mergekit": mergekit,
            "tasks": [asdict(t) for t in tasks],
            "table": table,
        }
        path = args.json or RESULTS_DIR / f"bench_moe-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\nSaved {path}")
        return 1 if any(t.mergehub.error or (t.mergekit and t.mergekit.error) for t in tasks) else 0
    finally:
        if temp is not None:
            temp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
