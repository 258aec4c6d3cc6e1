"""Benchmark a model with lm-eval, compare it with its parents, and carry the scores into its model card.

`evaluate` runs lm-eval's Hugging Face model wrapper (`hf`) on tasks found by name in lm-eval's
registry, in mergehub's shipped offline tasks (`mergehub/eval_tasks`), or as paths to task YAML
files. The result is an `EvalReport`, which prints as a table, turns into the card's `model-index`
entries (`EvalReport.scores`), and compares with the parents' reports (`compare`). A parent's scores
can be read back from its own card (`scores_from_card`, `report_from_card`) instead of recomputed.
`add_scores_to_card` writes scores and comparison into an existing card, keeping everything else.

lm-eval is an optional dependency (`pip install 'mergehub[eval]'`), imported only when a model is evaluated.
"""

from __future__ import annotations

import difflib
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard

from mergehub.errors import EvaluationError, UnknownTaskError
from mergehub.eval_tasks import SHIPPED_TASKS, TASKS_DIR
from mergehub.executor import resolve_device
from mergehub.publish.card import EvalScore, eval_result
from mergehub.publish.card_data import card_scores, read_card_data
from mergehub.recipe import ModelRef
from mergehub.sources import open_source
from mergehub.sources.hub import HTTPError

__all__ = [
    "INSTALL_HINT",
    "MetricScore",
    "EvalReport",
    "evaluate",
    "evaluate_loaded",
    "eval_dtype",
    "compare",
    "scores_from_card",
    "report_from_card",
    "parent_reports",
    "add_scores_to_card",
]

INSTALL_HINT = "pip install 'mergehub[eval]'"
LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"
TASK_TYPE = "text-generation"  # what the Hub's model-index calls every lm-eval benchmark of a causal LM
_SECTION = "## Evaluation"
# lm-eval's own default seeds are (0, 1234, 1234, 1234): seed 0 reproduces its numbers.
_SEED_OFFSET = 1234
_GENERIC_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
_MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]


@dataclass(frozen=True)
class MetricScore:
    """One metric of one task: its value, how it was measured, and what it was measured on."""

    task: str
    metric: str  # lm-eval's metric name (`acc`), with its filter when not `none` (`exact_match,strict-match`)
    value: float
    stderr: float | None = None
    num_fewshot: int | None = None
    limit: float | None = None  # lm-eval's `limit`: a count (or a fraction when < 1); None for the whole test set
    samples: int | None = None  # documents actually scored
    higher_is_better: bool | None = None
    dataset_type: str | None = None  # the Hub dataset the task reads, else the task name
    dataset_config: str | None = None
    dataset_split: str | None = None
    lm_eval_version: str | None = None

    def source(self) -> str:
        """How the score was measured, e.g. `lm-eval 0.4.13, 3-shot, limit 50`."""
        parts = [f"lm-eval {self.lm_eval_version or 'unknown'}"]
        if self.num_fewshot is not None:
            parts.append(f"{self.num_fewshot}-shot")
        if self.limit is not None:
            parts.append(f"limit {_number(self.limit)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class EvalReport:
    """The scores of one model on some lm-eval tasks, one `MetricScore` per task and metric."""

    model: str
    results: tuple[MetricScore, ...]
    lm_eval_version: str
    revision: str | None = None
    seed: int | None = None
    device: str | None = None
    dtype: str | None = None
    seconds: float | None = None

    def tasks(self) -> tuple[str, ...]:
        """The tasks scored, in report order."""
        return tuple(dict.fromkeys(r.task for r in self.results))

    def get(self, task: str, metric: str) -> MetricScore | None:
        """The score of `task` on `metric`, if the report has it."""
        return next((r for r in self.results if r.task == task and r.metric == metric), None)

    def table(self) -> str:
        """The scores as a Markdown table (readable as plain text too)."""
        rows = [
            [
                r.task,
                r.metric,
                f"{r.value:.4f}",
                f"{r.stderr:.4f}" if r.stderr is not None else "",
                "" if r.num_fewshot is None else str(r.num_fewshot),
                "" if r.samples is None else str(r.samples),
            ]
            for r in self.results
        ]
        return _markdown(["Task", "Metric", "Value", "± Stderr", "Few-shot", "Samples"], rows, right=(2, 3, 4, 5))

    def scores(self) -> tuple[EvalScore, ...]:
        """The card's `model-index` entries, one per task and metric; the source names lm-eval, few-shot and limit."""
        return tuple(
            EvalScore(
                task=TASK_TYPE,
                dataset_name=r.task,
                dataset_type=r.dataset_type or r.task,
                metric=r.metric,
                value=r.value,
                dataset_config=r.dataset_config,
                dataset_split=r.dataset_split,
                num_fewshot=r.num_fewshot,
                source_name=r.source(),
                source_url=LM_EVAL_URL,
            )
            for r in self.results
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


# ----------------------------------------------------------------------------- lm-eval


def _import_lm_eval() -> Any:
    try:
        import lm_eval
        import lm_eval.tasks
    except ImportError as e:
        raise EvaluationError(
            "Evaluating a model needs lm-eval (EleutherAI's lm-evaluation-harness), which is not installed.",
            hint=f"Install it with `{INSTALL_HINT}`.",
        ) from e
    return lm_eval


def _local_model(model: str | os.PathLike, token: str | None) -> tuple[Path, str | None, Path | None]:
    """A directory holding the model, the commit it was downloaded at (None for a local directory), and the
    directory of its LoRA adapter for a `model+adapter` reference (lm-eval applies it with peft)."""
    directory = Path(model).expanduser()
    if directory.is_dir():
        return directory, None, None
    ref = ModelRef.parse(str(model))
    local, revision = _download(ref.model, token, _MODEL_FILES)
    adapter = _download(ref.adapter, token, _ADAPTER_FILES)[0] if ref.adapter else None
    return local, revision, adapter


def _download(ref: ModelRef, token: str | None, patterns: list[str]) -> tuple[Path, str | None]:
    """A local directory as is, or a Hub repo's files matching `patterns`, downloaded at its revision."""
    if ref.is_local:
        return Path(ref.path), None
    if not ref.looks_like_hub_id:
        raise EvaluationError(
            f"{ref} is neither a directory nor a Hub model id.",
            hint="Give a model directory or `org/name[@revision]` (and `+adapter` for a LoRA adapter).",
        )
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(ref.path, revision=ref.revision, token=token, allow_patterns=patterns))
    except (
        OSError,
        ValueError,
        HTTPError,
    ) as e:  # huggingface_hub's HTTP, network, not-found, offline and validation errors
        raise EvaluationError(
            f"Could not download {ref} from the Hub: {e}",
            hint="Check the repo id, the revision, your token (HF_TOKEN) and the network.",
        ) from e
    return local, local.name


def _relative_data_files(value: Any, base: Path) -> tuple[Any, bool]:
    """`data_files` with each relative path that exists beside the YAML made absolute; and whether any was."""
    if isinstance(value, str):
        if "://" not in value and not Path(value).is_absolute() and (base / value).exists():
            return str((base / value).resolve()), True
        return value, False
    if isinstance(value, list):
        pairs = [_relative_data_files(v, base) for v in value]
        return [v for v, _ in pairs], any(changed for _, changed in pairs)
    if isinstance(value, dict):
        pairs_by_key = {k: _relative_data_files(v, base) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs_by_key.items()}, any(changed for _, changed in pairs_by_key.values())
    return value, False


def _yaml_spec(path: Path, load_yaml: Any) -> tuple[str | dict[str, Any], Path | None]:
    """What to hand lm-eval for a task YAML file, and a folder to index with it (a group's members live beside it).

    Local `data_files` (and `data_dir`) written relative to the YAML are resolved against its folder,
    so a task with its data beside it runs from any working directory.
    """
    path = path.expanduser().resolve()
    try:
        cfg = load_yaml(path, resolve_func=True, recursive=True)
    except (OSError, ValueError, ImportError, AttributeError, yaml.YAMLError) as e:  # `!function` imports run here
        raise UnknownTaskError(
            f"Task file {path} cannot be read: {e}", hint="Fix the YAML, or give a task name."
        ) from e
    if not isinstance(cfg, dict) or not ({"task", "group"} & cfg.keys()):
        raise UnknownTaskError(
            f"{path} is not an lm-eval task: it has no `task` or `group` key.", hint="See lm-eval's task guide."
        )
    if "group" in cfg:
        return str(path), path.parent
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    changed = False
    for key in ("data_files", "data_dir"):
        if key in kwargs:
            kwargs[key], moved = _relative_data_files(kwargs[key], path.parent)
            changed |= moved
    if not changed:
        return str(path), None
    return {**cfg, "dataset_kwargs": kwargs}, None


def _looks_like_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or os.sep in name or Path(name).is_file()


def _resolve_tasks(lm_eval: Any, tasks: Sequence[str]) -> tuple[Any, list[str | dict[str, Any]]]:
    """A TaskManager and the task specs for `simple_evaluate`; lm-eval's registry is indexed only if needed (~10 s)."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    if not tasks:
        raise UnknownTaskError("No tasks given.", hint=f"Name one or more tasks, e.g. {', '.join(SHIPPED_TASKS)}.")
    include: list[Path] = [TASKS_DIR]
    specs: list[str | dict[str, Any]] = []
    missing_files: list[str] = []
    for name in tasks:
        if _looks_like_path(name):
            if not Path(name).expanduser().is_file():
                missing_files.append(name)
                continue
            spec, folder = _yaml_spec(Path(name), load_yaml)
            specs.append(spec)
            if folder is not None and folder not in include:
                include.append(folder)
        else:
            specs.append(name)
    names = [s for s in specs if isinstance(s, str) and not _looks_like_path(s)]
    manager = TaskManager(include_path=[str(p) for p in include], include_defaults=False)
    if any(n not in manager.all_tasks for n in names) or missing_files:
        manager = TaskManager(include_path=[str(p) for p in include], include_defaults=True)
    unknown = [n for n in names if n not in manager.all_tasks] + missing_files
    if unknown:
        raise _unknown_tasks(lm_eval, unknown, include, manager.all_tasks)
    return manager, specs


def _unknown_tasks(lm_eval: Any, unknown: list[str], include: list[Path], known: Sequence[str]) -> UnknownTaskError:
    registry = Path(lm_eval.tasks.__file__).parent
    lines = [f"Unknown lm-eval task{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}. Looked in:"]
    lines.append(f"  - lm-eval {lm_eval.__version__}'s task registry: {registry}")
    lines.append(f"  - mergehub's shipped tasks: {TASKS_DIR} ({', '.join(('mergehub',) + SHIPPED_TASKS)})")
    lines += [f"  - the folder of a task group given by path: {folder}" for folder in include[1:]]
    lines.append(f"  - task YAML files, relative to {Path.cwd()}: no such file")
    for name in unknown:
        close = difflib.get_close_matches(Path(name).stem if _looks_like_path(name) else name, known, n=5, cutoff=0.6)
        if close:
            lines.append(f"Did you mean {', '.join(close)} (for {name})?")
    return UnknownTaskError(
        "\n".join(lines),
        hint="Give a task name from `lm-eval ls tasks`, one of mergehub's tasks, or the path to a task YAML file.",
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _hub_dataset(path: Any) -> str | None:
    """The Hub dataset a task reads; None for local files read by a generic builder (`json`, `csv`, ...)."""
    return None if path in _GENERIC_BUILDERS else _text(path)


def _report(
    results: Mapping[str, Any],
    *,
    model: str,
    lm_eval_version: str,
    limit: float | None,
    revision: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    seconds: float | None = None,
) -> EvalReport:
    """An EvalReport from the dictionary `lm_eval.simple_evaluate` returns."""
    rows: list[MetricScore] = []
    configs = results.get("configs", {})
    for task, values in results.get("results", {}).items():
        config = configs.get(task, {})
        better = results.get("higher_is_better", {}).get(task, {})
        shots = results.get("n-shot", {}).get(task)
        samples = results.get("n-samples", {}).get(task, {}).get("effective")
        split = config.get("test_split") or config.get("validation_split")
        for key, value in values.items():
            if "," not in key or _float(value) is None:
                continue
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr"):
                continue
            stderr = _float(values.get(f"{metric}_stderr,{filter_name}"))
            rows.append(
                MetricScore(
                    task=task,
                    metric=metric if filter_name == "none" else key,
                    value=float(value),
                    stderr=stderr,
                    num_fewshot=shots if isinstance(shots, int) else None,
                    limit=limit,
                    samples=samples if isinstance(samples, int) else None,
                    higher_is_better=better.get(metric),
                    dataset_type=_hub_dataset(config.get("dataset_path")),
                    dataset_config=_text(config.get("dataset_name")),
                    dataset_split=_text(split),
                    lm_eval_version=lm_eval_version,
                )
            )
    return EvalReport(
        model, tuple(rows), lm_eval_version, revision=revision, seed=seed, device=device, dtype=dtype, seconds=seconds
    )


def evaluate(
    model: str | os.PathLike,
    tasks: Sequence[str],
    *,
    limit: float | None = None,
    num_fewshot: int | None = None,
    device: str = "auto",
    dtype: str | None = None,
    batch_size: int | str = 8,
    seed: int = 0,
    token: str | None = None,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
) -> EvalReport:
    """Score a model (a directory or `org/name[@revision]`) on lm-eval tasks.

    Args:
        model: A local model directory, or a Hub repo (downloaded once, pinned to the commit it resolves to); a
            `model+adapter` reference is the model with its LoRA adapter applied by peft.
        tasks: lm-eval task, group or tag names; mergehub's shipped tasks (`mergehub_facts`,
            `mergehub_arithmetic`, or the tag `mergehub` for both); or paths to task YAML files.
        limit: Score only the first `limit` documents of each task (a fraction of them when < 1).
        num_fewshot: Few-shot examples per prompt; None keeps each task's default.
        device: `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available).
        dtype: The weights' dtype while evaluating; None means the model's own on CUDA and float32 on the CPU.
        batch_size: Documents per forward pass, or `auto` (lm-eval finds the largest that fits).
        seed: Seeds Python, NumPy, torch and few-shot sampling; 0 gives lm-eval's default seeds.
        token: A Hub token, for private or gated models.
        apply_chat_template: Wrap prompts in the tokenizer's chat template (lm-eval's option of that name).
        fewshot_as_multiturn: With a chat template, give few-shot examples as earlier turns.

    Raises:
        EvaluationError: lm-eval is not installed, or the model cannot be downloaded or loaded.
        UnknownTaskError: a task is in none of the places searched; the message lists them and close matches.
    """
    lm_eval = _import_lm_eval()
    manager, specs = _resolve_tasks(lm_eval, list(tasks))
    directory, revision, adapter = _local_model(model, token)
    torch_device = str(resolve_device(device))
    weights = eval_dtype(torch_device, dtype)
    from lm_eval.api.registry import get_model

    started = time.perf_counter()
    try:
        lm = get_model("hf")(
            pretrained=str(directory),
            device=torch_device,
            dtype=weights,
            batch_size=batch_size,
            peft=str(adapter) if adapter else None,
        )
    except (OSError, ValueError, KeyError) as e:
        raise EvaluationError(
            f"lm-eval could not load {model}: {e}",
            hint="Give a directory (or Hub repo) with config.json, safetensors weights and tokenizer files.",
        ) from e
    results = _simple_evaluate(
        lm_eval,
        lm,
        manager,
        specs,
        limit=limit,
        num_fewshot=num_fewshot,
        seed=seed,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn,
    )
    return _report(
        results,
        model=str(model),
        lm_eval_version=lm_eval.__version__,
        limit=limit,
        revision=revision,
        seed=seed,
        device=torch_device,
        dtype=weights,
        seconds=time.perf_counter() - started,
    )


def eval_dtype(device: str, dtype: str | None) -> str:
    """The dtype weights are evaluated in: the one asked for, else the model's own on CUDA and float32 on the CPU."""
    return dtype or ("auto" if device.startswith("cuda") else "float32")


def evaluate_loaded(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    label: str,
    limit: float | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 8,
    seed: int = 0,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
) -> EvalReport:
    """Score a transformers model object already in memory (its device and dtype as they are), as `evaluate` does.

    This is how a merge held in memory is scored without writing shards; `label` names it in the report.
    """
    lm_eval = _import_lm_eval()
    manager, specs = _resolve_tasks(lm_eval, list(tasks))
    from lm_eval.api.registry import get_model

    started = time.perf_counter()
    lm = get_model("hf")(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = _simple_evaluate(
        lm_eval,
        lm,
        manager,
        specs,
        limit=limit,
        num_fewshot=num_fewshot,
        seed=seed,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn,
    )
    return _report(
        results,
        model=label,
        lm_eval_version=lm_eval.__version__,
        limit=limit,
        seed=seed,
        device=str(model.device),
        dtype=str(model.dtype).removeprefix("torch."),
        seconds=time.perf_counter() - started,
    )


def _simple_evaluate(
    lm_eval: Any,
    lm: Any,
    manager: Any,
    specs: list[str | dict[str, Any]],
    *,
    limit: float | None,
    num_fewshot: int | None,
    seed: int,
    apply_chat_template: bool,
    fewshot_as_multiturn: bool,
) -> Mapping[str, Any]:
    """lm-eval's `simple_evaluate` with mergehub's seeding; a chat template is applied only when asked for."""
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=specs,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed + _SEED_OFFSET,
        torch_random_seed=seed + _SEED_OFFSET,
        fewshot_random_seed=seed + _SEED_OFFSET,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn and apply_chat_template,
    )
    if results is None:  # only on non-zero ranks of a distributed run
        raise EvaluationError("lm-eval returned no results.", hint="Run mergehub eval in a single process.")
    return results


# ----------------------------------------------------------------------------- comparison


def _markdown(header: list[str], rows: list[list[str]], right: Sequence[int] = ()) -> str:
    """A Markdown table with padded columns, so that it reads as well in a terminal."""
    cells = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join(("-" * (w + 1)) + (":" if i in right else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def compare(merged: EvalReport, parents: Mapping[str, EvalReport]) -> str:
    """A Markdown table of the merged model's scores beside each parent's, with the difference (merged − parent)."""
    header = ["Task", "Metric", "Merged"]
    for label in parents:
        header += [label, "Δ"]
    rows = []
    for score in merged.results:
        metric = score.metric + (" (lower is better)" if score.higher_is_better is False else "")
        row = [score.task, metric, f"{score.value:.4f}"]
        for report in parents.values():
            other = report.get(score.task, score.metric)
            row += ["—", "—"] if other is None else [f"{other.value:.4f}", f"{score.value - other.value:+.4f}"]
        rows.append(row)
    return _markdown(header, rows, right=tuple(range(2, len(header))))


_SOURCE_VERSION = re.compile(r"lm-eval (\S+?)(?:,|$)")
_SOURCE_LIMIT = re.compile(r"limit (\d+(?:\.\d+)?)")


def scores_from_card(readme: bytes | str | None) -> dict[tuple[str, str], MetricScore]:
    """The scores in a card's `model-index` by (task, metric), the task being the dataset name (as `EvalReport.scores`).

    Few-shot count, limit and lm-eval version are read back when the card gives them (mergehub writes
    them as `num_few_shot` and the source name); a card without them gives None.
    """
    found: dict[tuple[str, str], MetricScore] = {}
    for result in card_scores(read_card_data(readme)):
        if not result.dataset_name or not result.metric_type:
            continue
        args = result.dataset_args or {}
        shots = args.get("num_few_shot", args.get("num_fewshot"))
        source = result.source_name or ""
        version = _SOURCE_VERSION.search(source)
        limit = _SOURCE_LIMIT.search(source)
        found.setdefault(
            (result.dataset_name, result.metric_type),
            MetricScore(
                task=result.dataset_name,
                metric=result.metric_type,
                value=float(result.metric_value),
                num_fewshot=shots if isinstance(shots, int) else None,
                limit=float(limit[1]) if limit else None,
                dataset_type=result.dataset_type,
                dataset_config=result.dataset_config,
                dataset_split=result.dataset_split,
                lm_eval_version=version[1] if version else None,
            ),
        )
    return found


def report_from_card(readme: bytes | str | None, like: EvalReport, *, model: str) -> EvalReport | None:
    """A parent's report read from its card, when the card scores every task and metric of `like` the same way.

    "The same way" is the same few-shot count and the same limit; otherwise (or with no card) None,
    and the parent has to be evaluated.
    """
    card = scores_from_card(readme)
    rows = []
    for score in like.results:
        found = card.get((score.task, score.metric))
        if (
            found is None
            or found.num_fewshot != score.num_fewshot
            or found.limit != (None if score.limit is None else float(score.limit))
        ):
            return None
        rows.append(found)
    versions = {r.lm_eval_version for r in rows if r.lm_eval_version}
    return EvalReport(model, tuple(rows), versions.pop() if len(versions) == 1 else "unknown")


def parent_reports(
    merged: EvalReport, parents: Sequence[str], tasks: Sequence[str], *, token: str | bool | None = None, **options: Any
) -> dict[str, EvalReport]:
    """Each parent's scores: from its card when it was scored the same way as `merged`, else evaluated now."""
    reports = {}
    for parent in parents:
        source = open_source(ModelRef.parse(parent), token=token)
        try:
            readme = source.read_file("README.md")
        finally:
            source.close()
        reports[parent] = report_from_card(readme, merged, model=parent) or evaluate(
            parent, tasks, token=token, **options
        )
    return reports


# ----------------------------------------------------------------------------- the card


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _heading_lines(lines: list[str]) -> list[int]:
    """The indices of level-2 headings (`## `), skipping fenced code blocks."""
    found, fence = [], None
    for i, line in enumerate(lines):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match[1]
        elif fence is not None:
            if (
                match
                and match[1][0] == fence[0]
                and len(match[1]) >= len(fence)
                and not line.strip()[len(match[1]) :].strip()
            ):
                fence = None
        elif line.startswith("## ") or line.rstrip() == "##":
            found.append(i)
    return found


def _evaluation_section(report: EvalReport, comparison: str | None) -> str:
    seeds = f", seed {report.seed}" if report.seed is not None else ""
    limits = sorted({_number(r.limit) for r in report.results if r.limit is not None})
    sample = (
        f", on the first {' or '.join(limits)} documents of each task: a sample, not the full benchmark"
        if limits
        else ""
    )
    lines = [
        _SECTION,
        "",
        f"Scored with [lm-eval]({LM_EVAL_URL}) {report.lm_eval_version} by mergehub{seeds}{sample}.",
        "",
        report.table(),
    ]
    if comparison:
        lines += ["", "Compared with the parents (Δ = merged − parent):", "", comparison.strip()]
    return "\n".join(lines) + "\n"


def _model_name(report: EvalReport, text: str) -> str:
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), None)
    return title or report.model.rstrip("/").split("/")[-1]


def add_scores_to_card(card_text: str, report: EvalReport, comparison: str | None = None) -> str:
    """The card with the report's scores in its `model-index` and an `## Evaluation` section (added or replaced).

    Existing `model-index` entries for other tasks or metrics, every other metadata key and every other
    section are kept. The result parses back with `huggingface_hub.ModelCard(text).data.eval_results`.

    Raises:
        EvaluationError: the card's metadata cannot be parsed (so it cannot be updated without losing it).
    """
    try:
        card = ModelCard(card_text.lstrip("\ufeff"))
    except (ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as e:
        raise EvaluationError(
            f"The model card's metadata cannot be parsed: {e}", hint="Fix the YAML front matter of README.md."
        ) from e
    data = card.data
    new = [eval_result(score) for score in report.scores()]
    keys = {(r.dataset_name, r.dataset_type, r.dataset_config, r.metric_type) for r in new}
    kept = [
        r
        for r in data.eval_results or []
        if (r.dataset_name, r.dataset_type, r.dataset_config, r.metric_type) not in keys
    ]
    data.eval_results = kept + new
    data.model_name = data.model_name or _model_name(report, card.text)

    lines = card.text.splitlines(keepends=True)
    headings = _heading_lines(lines)
    section = _evaluation_section(report, comparison)
    start = next((i for i in headings if lines[i].strip() == _SECTION), None)
    if start is not None:
        end = next((i for i in headings if i > start), len(lines))
        lines[start:end] = [section, "\n"] if end < len(lines) else [section]
    else:
        anchor = next(
            (i for i in headings if lines[i].strip() in ("## Recipe", "## Reproducibility", "## Usage")), None
        )
        if anchor is not None:
            lines[anchor:anchor] = [section, "\n"]
        else:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines += (["\n"] if lines else []) + [section]
    body = "".join(lines)
    return f"---\n{data.to_yaml()}\n---\n{body if body.startswith(chr(10)) else chr(10) + body}"
