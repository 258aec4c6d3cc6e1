"""Benchmark `mergehub merge` against `mergekit-yaml` on three TinyLlama-1.1B-shaped bfloat16 models.

For each recipe, both tools run as child processes, one after the other, on a warm page cache.
Measured per tool: wall time, the child's peak RSS (`os.wait4`), bytes read and written, and
throughput; for mergehub also its peak RSS above the baseline of `import torch, mergehub.api`.
The two outputs are then compared tensor by tensor (max abs difference) and deleted.

    .venv/bin/python bench/bench_merge.py --workdir /tmp/mergehub-bench --methods linear,slerp

See bench/README.md for what is measured and how to read the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
INDEX_NAME = "model.safetensors.index.json"
MODEL_NAMES = ("base", "finetune-1", "finetune-2")
READY_MARKER = ".bench-complete"
GiB = 2**30
BUSY_CORES = 0.25  # CPU used by other processes during a run above which the table flags it


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class LlamaShape:
    """The dimensions of a Llama model; the defaults are TinyLlama-1.1B's."""

    hidden: int = 2048
    layers: int = 22
    intermediate: int = 5632
    heads: int = 32
    kv_heads: int = 4
    vocab: int = 32000

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every `(name, shape)` of LlamaForCausalLM with an untied lm_head, in transformers' order."""
        head_dim = self.hidden // self.heads
        kv = self.kv_heads * head_dim
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, self.hidden))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [
                (p + "self_attn.q_proj.weight", (self.hidden, self.hidden)),
                (p + "self_attn.k_proj.weight", (kv, self.hidden)),
                (p + "self_attn.v_proj.weight", (kv, self.hidden)),
                (p + "self_attn.o_proj.weight", (self.hidden, self.hidden)),
                (p + "mlp.gate_proj.weight", (self.intermediate, self.hidden)),
                (p + "mlp.up_proj.weight", (self.intermediate, self.hidden)),
                (p + "mlp.down_proj.weight", (self.hidden, self.intermediate)),
                (p + "input_layernorm.weight", (self.hidden,)),
                (p + "post_attention_layernorm.weight", (self.hidden,)),
            ]
        out += [("model.norm.weight", (self.hidden,)), ("lm_head.weight", (self.vocab, self.hidden))]
        return out

    @property
    def parameters(self) -> int:
        """Total parameter count."""
        return sum(math.prod(shape) for _, shape in self.tensors())


SMALL_SHAPE = LlamaShape(hidden=256, layers=4, intermediate=704, heads=8, kv_heads=2, vocab=1000)
MEDIUM_SHAPE = LlamaShape(hidden=768, layers=9, intermediate=2048, heads=12, kv_heads=12, vocab=32000)
"""About 112M parameters: the size of the models Spaces and tests merge, where fixed costs weigh most."""


def _seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def make_tensor(name: str, shape: tuple[int, ...], model_index: int, noise: float) -> torch.Tensor:
    """One bf16 tensor: the base's (seeded by name), plus seeded noise of std `noise` × the base's std for fine-tunes.

    Norm weights are 1 + N(0, 0.02); matrices are N(0, 0.02), as in a freshly initialised Llama.
    Each tensor has its own generator, so the base is regenerated identically for every fine-tune.
    """
    std = 0.02
    tensor = _randn(shape, _seed("base", name)).mul_(std)
    if name.endswith("norm.weight"):
        tensor.add_(1.0)
    if model_index > 0:
        tensor.add_(_randn(shape, _seed("finetune", model_index, name)).mul_(noise * std))
    return tensor.to(torch.bfloat16)


def _shard_groups(
    tensors: Sequence[tuple[str, tuple[int, ...]]], shard_bytes: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = 2 * math.prod(shape)
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    return groups


def generate_model(directory: Path, model_index: int, shape: LlamaShape, *, noise: float, shard_bytes: int) -> None:
    """Write one bf16 Llama as sharded safetensors + index, config.json and generation_config.json.

    Memory stays at about one shard: tensors are generated one by one and each shard is saved when full.
    """
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig

    directory.mkdir(parents=True, exist_ok=True)
    groups = _shard_groups(shape.tensors(), shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups):
        filename = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {name: make_tensor(name, dims, model_index, noise) for name, dims in group}
        save_file(shard, str(directory / filename), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in shard.values())
        weight_map.update(dict.fromkeys(shard, filename))
        del shard
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    config = LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    config.save_pretrained(directory)
    GenerationConfig(bos_token_id=1, eos_token_id=2, max_length=2048).save_pretrained(directory)


def ensure_models(root: Path, shape: LlamaShape, *, noise: float, shard_bytes: int) -> list[Path]:
    """The base and two fine-tunes under `root`, generated unless a previous run completed them."""
    paths = []
    for index, name in enumerate(MODEL_NAMES):
        directory = root / name
        marker = directory / READY_MARKER
        wanted = json.dumps({"shape": asdict(shape), "noise": noise, "shard_bytes": shard_bytes}, sort_keys=True)
        if marker.is_file() and marker.read_text() == wanted:
            print(f"  {name}: present, skipping generation", flush=True)
        else:
            if directory.exists():
                shutil.rmtree(directory)
            started = time.perf_counter()
            generate_model(directory, index, shape, noise=noise, shard_bytes=shard_bytes)
            marker.write_text(wanted)
            print(f"  {name}: generated in {time.perf_counter() - started:.1f} s", flush=True)
        paths.append(directory)
    return paths


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class BenchRecipe:
    """A mergekit YAML recipe with `{base}`, `{ft1}`, `{ft2}` for the models and `{layers}`, and which models it
    reads."""

    template: str
    reads: tuple[str, ...]
    random: bool = False

    def render(self, models: dict[str, Path], layers: int) -> str:
        """The recipe text with the model directories and the layer count filled in."""
        text = self.template.replace("{layers}", str(layers))
        for key, path in models.items():
            text = text.replace("{" + key + "}", str(path))
        return text


def _task_vector_recipe(method: str, p1: str, p2: str, shared: str, random: bool = False) -> BenchRecipe:
    """Base + two fine-tunes with per-model parameters `p1`, `p2` and global `shared` (YAML flow mappings)."""
    text = (
        f"merge_method: {method}\n"
        "base_model: {base}\n"
        "models:\n"
        f"  - {{model: {{ft1}}, parameters: {{{p1}}}}}\n"
        f"  - {{model: {{ft2}}, parameters: {{{p2}}}}}\n"
        f"parameters: {{{shared}}}\n"
        "dtype: bfloat16\n"
    )
    return BenchRecipe(text, ("base", "ft1", "ft2"), random)


RECIPES: dict[str, BenchRecipe] = {
    "linear": BenchRecipe(
        """\
merge_method: linear
models:
  - {model: {base}, parameters: {weight: 0.5}}
  - {model: {ft1}, parameters: {weight: 0.3}}
  - {model: {ft2}, parameters: {weight: 0.2}}
dtype: bfloat16
""",
        ("base", "ft1", "ft2"),
    ),
    "slerp": BenchRecipe(
        """\
merge_method: slerp
base_model: {base}
slices:
  - sources:
      - model: {base}
        layer_range: [0, {layers}]
      - model: {ft1}
        layer_range: [0, {layers}]
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
""",
        ("base", "ft1"),
    ),
    "task_arithmetic": _task_vector_recipe("task_arithmetic", "weight: 0.7", "weight: 0.5", "lambda: 0.9"),
    "ties": _task_vector_recipe("ties", "density: 0.5, weight: 0.5", "density: 0.5, weight: 0.3", "normalize: true"),
    "dare_ties": _task_vector_recipe(
        "dare_ties", "density: 0.53, weight: 0.5", "density: 0.53, weight: 0.3", "normalize: true", random=True
    ),
    "breadcrumbs": _task_vector_recipe(
        "breadcrumbs", "density: 0.9, gamma: 0.01, weight: 0.5", "density: 0.9, gamma: 0.01, weight: 0.3", "lambda: 1.0"
    ),
    "della": _task_vector_recipe(
        "della",
        "density: 0.5, epsilon: 0.1, weight: 0.5",
        "density: 0.5, epsilon: 0.1, weight: 0.3",
        "lambda: 1.0",
        random=True,
    ),
    "breadcrumbs_ties": _task_vector_recipe(
        "breadcrumbs_ties",
        "density: 0.9, gamma: 0.01, weight: 0.5",
        "density: 0.9, gamma: 0.01, weight: 0.3",
        "normalize: true",
    ),
    "della_linear": _task_vector_recipe(
        "della_linear",
        "density: 0.5, epsilon: 0.1, weight: 0.5",
        "density: 0.5, epsilon: 0.1, weight: 0.3",
        "lambda: 1.0",
        random=True,
    ),
    "sce": _task_vector_recipe("sce", "", "", "select_topk: 0.5"),
}
DEFAULT_METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_ties", "breadcrumbs", "della")


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class ChildRun:
    """One child process: its command, exit code, wall time and peak RSS."""

    command: list[str]
    returncode: int
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    others_cores: float | None
    log: str


# Linux keeps a process's peak RSS across exec, and a child starts with its parent's pages
# (fork) or its parent's address space (vfork), so a child forked from this process, which is
# large after generating models or comparing outputs, would report at least our RSS. Children are
# therefore started by a fresh, small Python that forks them, waits, and reports their rusage.
_LAUNCHER = """\
import json, os, subprocess, sys, time
report, log, command = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(log, "wb") as out:
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
scale = 1 if sys.platform == "darwin" else 1024
with open(report, "w") as f:
    json.dump({"returncode": os.waitstatus_to_exitcode(status), "seconds": seconds,
               "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_bytes": usage.ru_maxrss * scale}, f)
"""


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux `/proc/stat`), or None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_child(command: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> ChildRun:
    """Run `command`, its output to `log_path`; wall time and peak RSS (`ru_maxrss` from `os.wait4`).

    The command is started by a small launcher process so that its peak RSS is its own (see `_LAUNCHER`).
    """
    report = log_path.with_suffix(".rusage.json")
    report.unlink(missing_ok=True)
    busy_before = _busy_cpu_seconds()
    subprocess.run(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report), str(log_path), *command], check=True, env=env
    )
    busy_after = _busy_cpu_seconds()
    measured = json.loads(report.read_text())
    others = None
    if busy_before is not None and busy_after is not None and measured["seconds"] > 0:
        others = max(0.0, (busy_after - busy_before - measured["cpu_seconds"]) / measured["seconds"])
    return ChildRun(
        list(command),
        measured["returncode"],
        measured["seconds"],
        measured["cpu_seconds"],
        measured["peak_rss_bytes"],
        others,
        str(log_path),
    )


def warm_cache(directories: Sequence[Path], chunk: int = 64 * 2**20) -> float:
    """Read every file of `directories` once so both tools start with the inputs in the page cache."""
    started = time.perf_counter()
    buffer = bytearray(chunk)
    for directory in directories:
        for path in sorted(directory.iterdir()):
            if path.is_file():
                with open(path, "rb", buffering=0) as f:
                    while f.readinto(buffer):
                        pass
    return time.perf_counter() - started


def io_floor(directories: Sequence[Path], write_bytes: int, scratch: Path, chunk: int = 64 * 2**20) -> float:
    """Seconds to read every file of `directories` (already cached) and write `write_bytes` to a file in `scratch`:
    what a merge cannot go below on this machine, measured with plain `readinto` and `write` of one reused buffer."""
    warm_cache(directories, chunk)
    buffer = bytearray(chunk)
    started = time.perf_counter()
    warm_cache(directories, chunk)
    target = scratch / "io-floor.bin"
    with open(target, "wb", buffering=0) as f:
        left = write_bytes
        while left > 0:
            left -= f.write(memoryview(buffer)[: min(left, chunk)])
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def input_bytes(directories: Sequence[Path]) -> int:
    """Tensor bytes of the given models, from their index's `total_size`."""
    return sum(json.loads((d / INDEX_NAME).read_text())["metadata"]["total_size"] for d in directories)


def output_bytes(directory: Path) -> int:
    """Size of the `*.safetensors` files in an output directory."""
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def iter_output_tensors(directory: Path) -> Iterator[tuple[str, Path]]:
    """`(tensor name, shard path)` of every tensor of a merged model."""
    from safetensors import safe_open

    index = directory / INDEX_NAME
    if index.is_file():
        for name, file in json.loads(index.read_text())["weight_map"].items():
            yield name, directory / file
        return
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                yield name, path


@dataclass(frozen=True)
class Comparison:
    """How two merged models differ."""

    tensors: int
    max_abs_diff: float
    worst_tensor: str | None
    mismatched_tensors: int
    only_in_mergehub: list[str]
    only_in_mergekit: list[str]


def compare_outputs(a: Path, b: Path) -> Comparison:
    """Max abs difference over all tensors of two outputs, loaded one tensor at a time (in float32)."""
    from safetensors import safe_open

    files_a, files_b = dict(iter_output_tensors(a)), dict(iter_output_tensors(b))
    common = [name for name in files_a if name in files_b]
    worst, worst_name, mismatched = 0.0, None, 0
    handles: dict[Path, object] = {}
    try:
        for name in common:
            tensors = []
            for path in (files_a[name], files_b[name]):
                if path not in handles:
                    handles[path] = safe_open(str(path), "pt").__enter__()
                tensors.append(handles[path].get_tensor(name))
            ta, tb = tensors
            if ta.shape != tb.shape:
                mismatched += 1
                worst, worst_name = math.inf, name
                continue
            diff = (ta.float() - tb.float()).abs().max().item() if ta.numel() else 0.0
            mismatched += diff > 0
            if diff > worst or worst_name is None:
                worst, worst_name = diff, name
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)
    return Comparison(
        len(common),
        worst,
        worst_name,
        mismatched,
        sorted(set(files_a) - set(files_b)),
        sorted(set(files_b) - set(files_a)),
    )


# --------------------------------------------------------------------------- the benchmark


@dataclass
class ToolResult:
    """One tool's run of one recipe."""

    seconds: float | None = None
    cpu_seconds: float | None = None
    peak_rss_bytes: int | None = None
    others_cores: float | None = None
    bytes_read: int = 0
    bytes_written: int = 0
    throughput_gb_s: float | None = None
    returncode: int | None = None
    error: str | None = None
    log: str | None = None
    repeats: list[dict] = field(default_factory=list)


@dataclass
class MethodResult:
    """Both tools on one recipe, and how their outputs compare."""

    method: str
    recipe: str
    mergehub: ToolResult = field(default_factory=ToolResult)
    mergekit: ToolResult | None = None
    comparison: Comparison | None = None
    skipped: str | None = None
    io_floor_seconds: float | None = None
    """Reading the inputs from the page cache and writing the output's bytes, with plain reads and writes."""


def _tail(path: str, lines: int = 8) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def run_tool(
    command: Sequence[str],
    out_dir: Path,
    log: Path,
    read_bytes: int,
    warm: Callable[[], float],
    repeats: int = 1,
    env: dict[str, str] | None = None,
) -> ToolResult:
    """Warm the cache and run one merge command `repeats` times; the fastest run's figures are kept."""
    best: ChildRun | None = None
    runs = []
    for _ in range(repeats):
        shutil.rmtree(out_dir, ignore_errors=True)
        warm()
        child = run_child(command, log, env)
        runs.append({k: getattr(child, k) for k in ("seconds", "cpu_seconds", "peak_rss_bytes", "others_cores")})
        if child.returncode != 0:
            best = child
            break
        if best is None or child.seconds < best.seconds:
            best = child
    assert best is not None
    result = ToolResult(
        seconds=best.seconds,
        cpu_seconds=best.cpu_seconds,
        peak_rss_bytes=best.peak_rss_bytes,
        others_cores=best.others_cores,
        returncode=best.returncode,
        log=best.log,
        repeats=runs,
    )
    if best.returncode != 0:
        result.error = _tail(best.log)
        return result
    result.bytes_read = read_bytes
    result.bytes_written = output_bytes(out_dir)
    result.throughput_gb_s = (result.bytes_read + result.bytes_written) / best.seconds / 1e9
    return result


def source_state() -> dict[str, object]:
    """The mergehub commit and the files changed since, so a result can be tied to the code it measured."""
    root = BENCH_DIR.parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never refresh the index

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], check=False, capture_output=True, text=True, env=env)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "changed": git("diff", "--name-only", "HEAD").splitlines(),
        "untracked": git("ls-files", "--others", "--exclude-standard", "mergehub").splitlines(),
    }


def registered_methods(python: str) -> set[str]:
    """The method names `mergehub methods` lists."""
    out = subprocess.run([python, "-m", "mergehub", "methods"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def find_mergekit() -> str | None:
    """`mergekit-yaml` next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "mergekit-yaml"
    return str(beside) if beside.is_file() else shutil.which("mergekit-yaml")


def _gib(n: int | None) -> str:
    return "—" if n is None else f"{n / GiB:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or not b else f"{a / b:.2f}"


def _describe(r: ToolResult) -> str:
    if r.error:
        return f"failed (exit {r.returncode})"
    text = f"{r.seconds:.1f} s wall, {r.cpu_seconds:.1f} s CPU, peak RSS {r.peak_rss_bytes / GiB:.2f} GiB"
    if r.others_cores is not None:
        text += f", other processes used {r.others_cores:.1f} cores meanwhile"
        if r.others_cores > BUSY_CORES:
            text += " (machine busy: timings are inflated)"
    return text


def _secs(r: ToolResult | None) -> str:
    if r is None:
        return "—"
    if r.error:
        return "failed"
    return f"{r.seconds:.1f}" + ("*" if r.others_cores is not None and r.others_cores > BUSY_CORES else "")


def markdown_table(results: Sequence[MethodResult], baseline_rss: int) -> str:
    """The results as a markdown table."""
    head = (
        "| method | mergehub s | mergekit s | time ratio (mergehub/mergekit) | mergehub peak RSS GiB "
        "| mergekit peak RSS GiB | RSS ratio | mergehub RSS above baseline GiB | max abs diff "
        "| mergehub CPU s | mergekit CPU s | I/O floor s | mergehub / floor | mergehub / own linear |"
    )
    rows = [head, "|" + "---|" * 14]
    linear = next((r.mergehub.seconds for r in results if r.method == "linear" and r.mergehub.error is None), None)
    for r in results:
        if r.skipped:
            rows.append(f"| {r.method} | skipped: {r.skipped} |" + " |" * 12)
            continue
        hub, kit = r.mergehub, r.mergekit
        hub_ok, kit_ok = hub.error is None, kit is not None and kit.error is None
        hub_rss = hub.peak_rss_bytes if hub_ok else None
        kit_rss = kit.peak_rss_bytes if kit_ok else None
        diff = "—"
        if r.comparison is not None:
            c = r.comparison
            diff = f"{c.max_abs_diff:.3g}" + (
                f" ({c.mismatched_tensors}/{c.tensors} tensors differ)" if c.max_abs_diff else ""
            )
            if c.only_in_mergehub or c.only_in_mergekit:
                diff += f"; names differ ({len(c.only_in_mergehub)}/{len(c.only_in_mergekit)})"
        rows.append(
            f"| {r.method} | {_secs(hub)} | {_secs(kit)} "
            f"| {_ratio(hub.seconds if hub_ok else None, kit.seconds if kit_ok else None)} "
            f"| {_gib(hub_rss)} | {_gib(kit_rss)} | {_ratio(hub_rss, kit_rss)} "
            f"| {_gib(None if hub_rss is None else hub_rss - baseline_rss)} | {diff} "
            f"| {_cpu(hub)} | {_cpu(kit)} "
            f"| {'—' if r.io_floor_seconds is None else f'{r.io_floor_seconds:.2f}'} "
            f"| {_ratio(hub.seconds if hub_ok else None, r.io_floor_seconds)} "
            f"| {_ratio(hub.seconds if hub_ok else None, linear)} |"
        )
    return "\n".join(rows)


def _cpu(r: ToolResult | None) -> str:
    return "—" if r is None or r.error or r.cpu_seconds is None else f"{r.cpu_seconds:.1f}"


def _parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    number = text.rstrip("bBkKmMgGiI")
    return int(float(number) * units[text[len(number) :].upper()])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", type=Path, help="keep models here between runs (default: a temporary directory)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, from: {', '.join(RECIPES)}")
    p.add_argument("--no-mergekit", action="store_true", help="run mergehub only")
    p.add_argument("--out-shard-size", default="2GB", help="output shard size for both tools (default: 2GB)")
    p.add_argument("--in-shard-size", default="1GB", help="shard size of the generated inputs (default: 1GB)")
    p.add_argument("--seed", type=int, default=0, help="seed of random methods, for both tools (default: 0)")
    p.add_argument(
        "--noise", type=float, default=0.01, help="fine-tune noise std relative to the weights' (default: 0.01)"
    )
    p.add_argument("--small", action="store_true", help="small models (hidden 256, 4 layers) for a quick smoke test")
    p.add_argument("--medium", action="store_true", help="~112M-parameter models (hidden 768, 9 layers, vocab 32000)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both tools (default: their own default)")
    p.add_argument("--mergehub-threads", type=int, help="OMP_NUM_THREADS for mergehub only (to compare 1 and 2)")
    p.add_argument("--repeats", type=int, default=1, help="runs per tool and recipe; the fastest counts (default: 1)")
    p.add_argument("--keep-outputs", action="store_true", help="do not delete merged outputs")
    p.add_argument("--json", type=Path, help="where to save the JSON (default: bench/results/bench_merge-<time>.json)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the models if needed, run every requested recipe with both tools, print and save the table."""
    args = _parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in RECIPES]
    if unknown:
        print(f"error: unknown methods {unknown}; known: {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    shape = SMALL_SHAPE if args.small else MEDIUM_SHAPE if args.medium else LlamaShape()
    out_shard_bytes = _parse_size(args.out_shard_size)
    python = sys.executable
    env = None
    if args.threads:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    hub_env = env
    if args.mergehub_threads:
        threads = str(args.mergehub_threads)
        hub_env = {**(env or os.environ), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    mergekit = None if args.no_mergekit else find_mergekit()
    if not args.no_mergekit and mergekit is None:
        print("note: mergekit-yaml not found; running mergehub only (pip install mergekit to compare).", flush=True)

    temp = None
    if args.workdir is None:
        temp = tempfile.TemporaryDirectory(prefix="mergehub-bench-")
        workdir = Path(temp.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        model_root = workdir / ("models-small" if args.small else "models-medium" if args.medium else "models")
        print(f"Models: {shape.parameters / 1e9:.3g}B parameters each, bf16, in {model_root}", flush=True)
        paths = ensure_models(model_root, shape, noise=args.noise, shard_bytes=_parse_size(args.in_shard_size))
        models = dict(zip(("base", "ft1", "ft2"), paths, strict=True))
        runs = workdir / "runs"
        runs.mkdir(exist_ok=True)

        baseline = run_child([python, "-c", "import torch, mergehub.api"], runs / "baseline.log")
        print(f"Baseline RSS of `import torch, mergehub.api`: {baseline.peak_rss_bytes / GiB:.2f} GiB", flush=True)
        available = registered_methods(python)

        results: list[MethodResult] = []
        for method in methods:
            spec = RECIPES[method]
            text = spec.render(models, shape.layers)
            result = MethodResult(method, text)
            results.append(result)
            if method not in available:
                result.skipped = "not registered in mergehub (`mergehub methods`)"
                print(f"[{method}] skipped: not listed by `mergehub methods`", flush=True)
                continue
            recipe_path = runs / f"{method}.yml"
            recipe_path.write_text(text)
            inputs = [models[key] for key in spec.reads]
            read_bytes = input_bytes(inputs)

            def warm(inputs: list[Path] = inputs) -> float:
                return warm_cache(inputs)

            hub_out, kit_out = runs / f"{method}-mergehub", runs / f"{method}-mergekit"
            for stale in (hub_out, kit_out):
                shutil.rmtree(stale, ignore_errors=True)
            command = [
                python,
                "-m",
                "mergehub",
                "merge",
                str(recipe_path),
                str(hub_out),
                "--no-progress",
                "--out-shard-size",
                str(out_shard_bytes),
                "--seed",
                str(args.seed),
            ]
            print(f"[{method}] mergehub ...", end=" ", flush=True)
            result.mergehub = run_tool(
                command, hub_out, runs / f"{method}-mergehub.log", read_bytes, warm, args.repeats, hub_env
            )
            print(_describe(result.mergehub), flush=True)
            if result.mergehub.error is None:
                result.io_floor_seconds = io_floor(inputs, result.mergehub.bytes_written or 0, runs)
                print(
                    f"[{method}] I/O floor {result.io_floor_seconds:.2f} s (cached read of the inputs, write of the "
                    f"output's bytes): mergehub at {result.mergehub.seconds / result.io_floor_seconds:.1f}x",
                    flush=True,
                )
            if mergekit is not None:
                # mergekit's --out-shard-size counts bytes (its help says parameters); pass the same byte count.
                command = [mergekit, str(recipe_path), str(kit_out), "--out-shard-size", str(out_shard_bytes)]
                if spec.random:
                    command += ["--random-seed", str(args.seed)]
                print(f"[{method}] mergekit ...", end=" ", flush=True)
                result.mergekit = run_tool(
                    command, kit_out, runs / f"{method}-mergekit.log", read_bytes, warm, args.repeats, env
                )
                print(_describe(result.mergekit), flush=True)
                if result.mergehub.error is None and result.mergekit.error is None:
                    result.comparison = compare_outputs(hub_out, kit_out)
                    print(f"[{method}] max abs diff {result.comparison.max_abs_diff:.3g}", flush=True)
            for tool in (result.mergehub, result.mergekit):
                if tool is not None and tool.error:
                    print(f"[{method}] failed (exit {tool.returncode}), log {tool.log}:\n{tool.error}", flush=True)
            if not args.keep_outputs:
                for out in (hub_out, kit_out):
                    shutil.rmtree(out, ignore_errors=True)

        table = markdown_table(results, baseline.peak_rss_bytes)
        print()
        print(table)
        notes = [
            f"- {r.method}: output depends on the RNG; mergehub and mergekit draw different masks, so outputs differ."
            for r in results
            if RECIPES[r.method].random and not r.skipped and r.comparison is not None
        ]
        if "*" in table:
            notes.append(
                f"- *: other processes used more than {BUSY_CORES} CPU cores during this run; its time is inflated."
            )
        if notes:
            print("\n".join(["", *notes]))
        payload = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
            },
            "models": {
                "shape": asdict(shape),
                "parameters": shape.parameters,
                "noise": args.noise,
                "in_shard_size": args.in_shard_size,
            },
            "source": source_state(),
            "threads": args.threads,
            "out_shard_bytes": out_shard_bytes,
            "seed": args.seed,
            "baseline_rss_bytes": baseline.peak_rss_bytes,
            "mergekit": mergekit,
            "results": [asdict(r) for r in results],
            "table": table,
        }
        json_path = args.json or RESULTS_DIR / f"bench_merge-{time.strftime('%Y%m%d-%H%M%S')}.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\nSaved {json_path}")
        failed = any(r.mergehub.error or (r.mergekit and r.mergekit.error) for r in results if not r.skipped)
        return 1 if failed else 0
    finally:
        if temp is not None:
            temp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
