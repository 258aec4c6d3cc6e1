"""The model card of a merge: card data (parents, licenses, scores, reproducibility) first, then the Markdown."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from mergehub import safe_yaml
from mergehub.errors import OutputError, RecipeWarning, SourceError
from mergehub.methods import get_method
from mergehub.plan import InputFile, ModelEntry, Plan
from mergehub.publish.card_data import MERGEHUB_KEY, card_license, card_scores, read_card_data
from mergehub.publish.lineage import LineageGraph
from mergehub.recipe import RECIPE_FILE, ModelRef, recipe_sha256
from mergehub.sources import open_source
from mergehub.sources.adapter import ADAPTER_FILE_PREFIX
from mergehub.writer import ShardResult

__all__ = [
    "TAGS",
    "MOE_TAG",
    "ParentCard",
    "EvalScore",
    "ExpertRow",
    "StageRow",
    "MergeCard",
    "parent_card",
    "resolve_license",
    "merge_card",
    "plan_card",
    "merged_model_files",
    "render_card",
    "provenance",
    "eval_result",
    "AdapterCard",
    "adapter_card",
    "render_adapter_card",
]

TAGS = ("merge", "mergekit", "mergehub")
MOE_TAG = "moe"
HUB_URL = "https://huggingface.co"
# Licenses (Hub ids or `license_name`s) that forbid commercial use; `cc-by-nc*` is matched by prefix.
_NON_COMMERCIAL = frozenset(
    {
        "apple-amlr",
        "deepfloyd-if-license",
        "fair-noncommercial-research-license",
        "intel-research",
        "llama-license",
        "llama-research",
        "mnpl",
        "mrl",
        "qwen-research",
    }
)


@dataclass(frozen=True)
class ParentCard:
    """What a merge's card says about one parent: where it is pinned, its license, its own scores."""

    ref: str
    revision: str | None = None
    license: str | None = None
    gated: bool = False
    non_commercial: bool = False
    scores: dict[str, float] = field(default_factory=dict, hash=False)
    is_hub: bool = False
    adapter_of: str | None = None
    """For a LoRA adapter merged into a parent (`model+adapter`): that parent's ref."""


@dataclass(frozen=True)
class EvalScore:
    """One evaluation result of the merged model, written to the card's `model-index`."""

    task: str  # the task type, e.g. "text-generation"
    dataset_name: str
    dataset_type: str
    metric: str
    value: float
    dataset_config: str | None = None
    dataset_split: str | None = None
    num_fewshot: int | None = None
    source_name: str | None = None
    source_url: str | None = None


@dataclass(frozen=True)
class ExpertRow:
    """One expert of an MoE as its card shows it: its model, whether shared, its prompts, noise and residual scale."""

    model: str
    positive_prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...] = ()
    shared: bool = False
    noise_scale: float | None = None
    residual_scale: float | None = None


@dataclass(frozen=True)
class StageRow:
    """One stage of a multi-stage recipe as the card shows it: its name (None: the final), method and inputs."""

    name: str | None
    method: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class MergeCard:
    """Everything the card of a merged model shows; parents are kept base first, without repeats."""

    repo_id: str
    method: str
    paper: str | None
    base: str | None
    parents: tuple[ParentCard, ...]
    recipe_yaml: str
    seed: int
    shards: tuple[tuple[str, str], ...]  # (filename, sha256)
    versions: tuple[tuple[str, str], ...]  # (package, version)
    command: str
    lineage_mermaid: str | None = None
    eval_results: tuple[EvalScore, ...] = ()
    non_finite: tuple[str, ...] = ()
    """Tensors found holding NaN or Inf values (`model: tensor (N NaN/Inf)` for an input)."""
    checked: tuple[tuple[str, bool, str], ...] = ()
    """Each Hub weight file read (`model/file`), whether its sha256 was verified in transit, and why not."""
    warnings: tuple[RecipeWarning, ...] = ()
    """What the recipe sets that the merge ignored (`Plan.warnings`)."""
    experts: tuple[ExpertRow, ...] = ()
    """For an MoE: each expert and the prompts its router was initialised from."""
    architecture: str | None = None
    gate_mode: str | None = None
    experts_per_token: int | None = None
    stages: tuple[StageRow, ...] = ()
    """For a multi-stage recipe: every stage in the order it ran, the final last."""

    def __post_init__(self) -> None:
        unique: dict[str, ParentCard] = {}
        for parent in self.parents:
            unique.setdefault(parent.ref, parent)
        object.__setattr__(self, "parents", tuple(sorted(unique.values(), key=lambda p: p.ref != self.base)))


def _non_commercial(name: object) -> bool:
    return isinstance(name, str) and (name.lower().startswith("cc-by-nc") or name.lower() in _NON_COMMERCIAL)


def _scores(data: ModelCardData) -> dict[str, float]:
    return {f"{r.dataset_name} ({r.metric_name or r.metric_type})": float(r.metric_value) for r in card_scores(data)}


def parent_card(
    label: str,
    revision: str | None,
    readme: bytes | None,
    *,
    gated: bool = False,
    adapter_of: str | None = None,
) -> ParentCard:
    """A parent's card data from its README.md; a missing or malformed card gives no license and no scores.

    `revision` is the commit of a Hub parent and None for a local directory (as `TensorSource.revision`).
    """
    data = read_card_data(readme)
    is_hub = revision is not None
    return ParentCard(
        ref=label.split("@")[0] if is_hub else label,
        revision=revision,
        license=card_license(data) if data else None,
        gated=gated,
        non_commercial=bool(data) and (_non_commercial(data.license) or _non_commercial(data.license_name)),
        scores=_scores(data) if data else {},
        is_hub=is_hub,
        adapter_of=adapter_of,
    )


def _license_text(parent: ParentCard) -> str:
    flags = [flag for flag, on in (("non-commercial", parent.non_commercial), ("gated", parent.gated)) if on]
    return (parent.license or "unknown") + (f" ({', '.join(flags)})" if flags else "")


def resolve_license(parents: Sequence[ParentCard]) -> tuple[str, list[str]]:
    """The merge's license: the parents' common one when all agree and none is restrictive, else `other`.

    Returns:
        The license id, and one warning line per parent (empty when the common license applies).
    """
    licenses = {p.license for p in parents}
    common = licenses.pop() if len(licenses) == 1 else None
    restricted = any(p.non_commercial or p.gated for p in parents)
    if common and not common.startswith("other") and not restricted:
        return common, []
    return "other", [f"{p.ref}: {_license_text(p)}" for p in parents]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def merge_card(
    repo_id: str,
    plan: Plan,
    shards: Iterable[ShardResult],
    *,
    command: str,
    parents: Iterable[ParentCard],
    lineage_mermaid: str | None = None,
    eval_results: Sequence[EvalScore] = (),
    non_finite: Sequence[str] = (),
) -> MergeCard:
    """The card data of a finished merge; parents follow the plan's models (base first, then recipe order), then the
    other stages' models for a multi-stage recipe."""
    models = _parent_models(plan)
    paths = [path for m in models for path in (m.path, m.adapter.path if m.adapter else None) if path]
    order = {path: i for i, path in reversed(list(enumerate(paths)))}
    label = {m.ref: m.path for m in plan.models}
    moe = plan.moe
    return MergeCard(
        repo_id=repo_id,
        method=plan.method,
        paper=None if moe else get_method(plan.method).paper,
        base=ModelRef.parse(plan.base_model).path if plan.base_model else None,
        parents=tuple(sorted(parents, key=lambda p: (order.get(p.ref, len(order)), p.ref))),
        recipe_yaml=plan.recipe_text,
        seed=plan.seed,
        shards=tuple((s.filename, s.sha256) for s in shards),
        versions=tuple((package, _version(package)) for package in ("mergehub", "torch", "transformers")),
        command=command,
        lineage_mermaid=lineage_mermaid,
        eval_results=tuple(eval_results),
        non_finite=tuple(non_finite),
        checked=tuple((_input_label(plan, f), f.verified, f.reason) for f in plan.input_files),
        warnings=plan.warnings,
        experts=tuple(
            ExpertRow(label[e.model], e.positive_prompts, e.negative_prompts, e.shared, e.noise_scale, e.residual_scale)
            for e in moe.experts
        )
        if moe
        else (),
        architecture=moe.architecture if moe else None,
        gate_mode=moe.gates.mode if moe else None,
        experts_per_token=moe.experts_per_token if moe else None,
        stages=tuple(StageRow(stage.name, stage.method, tuple(m.ref for m in stage.models)) for stage in plan.stages),
    )


def _parent_models(plan: Plan) -> list[ModelEntry]:
    """The models a merge's card lists as parents: the plan's, or for a multi-stage recipe every stage's models (not the
    stages' own outputs)."""
    if not plan.stages:
        return list(plan.models)
    stages = {stage.name for stage in plan.stages}
    return list({m.ref: m for stage in plan.stages for m in stage.models if m.ref not in stages}.values())


def plan_card(
    plan: Plan,
    shards: Iterable[ShardResult],
    *,
    repo_id: str,
    command: str,
    readmes: Mapping[str, bytes | None],
    lineage: LineageGraph | None = None,
    non_finite: Sequence[str] = (),
) -> ModelCard:
    """The merged model's card, from its plan: parents with pinned revisions and licenses (from their `readmes`,
    by plan key, and a LoRA adapter's by its reference), recipe, seed, checksums, lineage, and the tensors found
    holding NaN or Inf values."""
    parents = []
    for m in _parent_models(plan):
        parents.append(parent_card(str(m.pinned.model), m.revision, readmes.get(m.ref), gated=m.gated))
        if m.adapter is not None:
            parents.append(
                parent_card(
                    m.adapter.pinned,
                    m.adapter.revision,
                    readmes.get(m.adapter.ref),
                    gated=m.adapter.gated,
                    adapter_of=parents[-1].ref,
                )
            )
    if lineage is not None:  # the new model's node shows the license its card gets
        lineage = lineage.with_license(lineage.root, resolve_license(parents)[0])
    card = merge_card(
        repo_id,
        plan,
        shards,
        command=command,
        parents=parents,
        lineage_mermaid=lineage.to_mermaid() if lineage else None,
        non_finite=non_finite,
    )
    return render_card(card)


def merged_model_files(target: str, token: str | bool | None) -> tuple[str, tuple[ShardResult, ...], str]:
    """A merged model's recipe text, its shards' checksums, and its name: from a directory or a Hub repo.

    Raises:
        OutputError: the model has no mergekit_config.yml.
        RecipeError: the recipe file cannot be read.
        SourceError: the weights or the Hub repo cannot be read.
    """
    directory = Path(target)
    if directory.is_dir():
        recipe = directory / RECIPE_FILE
        if not recipe.is_file():
            raise OutputError(
                f"{directory} has no {RECIPE_FILE}.", hint="Give a directory made by mergehub or mergekit."
            )
        text = safe_yaml.read_text(recipe)
        try:
            shards = tuple(
                ShardResult(p.name, p.stat().st_size, _sha256(p)) for p in sorted(directory.glob("*.safetensors"))
            )
        except OSError as e:
            raise SourceError(
                f"Cannot read the weights in {directory}: {e.strerror or e}.", hint="Check the files' permissions."
            ) from e
        return text, shards, directory.name
    source = open_source(ModelRef.parse(target), token=token)
    try:
        text = source.read_file(RECIPE_FILE)
        if text is None:
            raise OutputError(
                f"{target} has no {RECIPE_FILE}.", hint="Only merges made by mergehub or mergekit can be re-carded."
            )
        listed = getattr(source, "file_sizes", {})
        shards = tuple(
            ShardResult(name, listed[name] or 0, source.lfs_sha256.get(name, ""))
            for name in sorted(listed)
            if name.endswith(".safetensors")
        )
        return text.decode("utf-8"), shards, source.repo_id
    finally:
        source.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _input_label(plan: Plan, file: InputFile) -> str:
    """`repo/file` of an input weight file: the model's, or its adapter's for an adapter file."""
    model = plan.model(file.model)
    if file.file.startswith(ADAPTER_FILE_PREFIX) and model.adapter is not None:
        return f"{model.adapter.path}/{file.file.removeprefix(ADAPTER_FILE_PREFIX)}"
    return f"{model.path}/{file.file}"


def eval_result(score: EvalScore) -> EvalResult:
    """One score as huggingface_hub's `EvalResult` (a model-index entry)."""
    return EvalResult(
        task_type=score.task,
        dataset_type=score.dataset_type,
        dataset_name=score.dataset_name,
        metric_type=score.metric,
        metric_value=score.value,
        dataset_config=score.dataset_config,
        dataset_split=score.dataset_split,
        dataset_args={"num_few_shot": score.num_fewshot} if score.num_fewshot is not None else None,
        source_name=score.source_name if score.source_url else None,
        source_url=score.source_url,
    )


def _fence(text: str, lang: str) -> str:
    """A fenced code block whose fence is longer than any backtick run inside `text`."""
    ticks = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{ticks}{lang}\n{text.strip()}\n{ticks}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _model_link(parent: ParentCard) -> str:
    return f"[{parent.ref}]({HUB_URL}/{parent.ref})" if parent.is_hub else f"`{parent.ref}` (local)"


def _parent_row(parent: ParentCard, base: str | None, note: str = "") -> str:
    model = _model_link(parent) + (" (base)" if parent.ref == base else "") + note
    if parent.adapter_of:
        model += f" (LoRA adapter, merged into {parent.adapter_of})"
    if parent.revision and parent.is_hub:
        revision = f"[`{parent.revision[:10]}`]({HUB_URL}/{parent.ref}/commit/{parent.revision})"
    else:
        revision = "—"
    scores = "; ".join(f"{task}: {value:.4g}" for task, value in parent.scores.items()) or "—"
    return f"| {_cell(model)} | {revision} | {_cell(_license_text(parent))} | {_cell(scores)} |"


def _license_lines(warnings: list[str], license_id: str, what: str) -> list[str]:
    """The card's License section when the parents' licenses differ, are unknown or restrict use (else none)."""
    if not warnings:
        return []
    return [
        "",
        "## License",
        "",
        "> [!WARNING]",
        "> The parents' licenses differ, are unknown or restrict use, "
        f"so this {what} is marked `{license_id}`. Each parent's terms still apply:",
        *(f"> - {w}" for w in warnings),
    ]


def _body(card: MergeCard, license_id: str, warnings: list[str]) -> str:
    name = card.repo_id.split("/")[-1]
    method = f"[{card.method}]({card.paper})" if card.paper else f"`{card.method}`"
    base = next((p for p in card.parents if p.ref == card.base), None)
    on_base = f", with {_model_link(base)} as the base" if base else ""
    if card.stages:
        what = (
            f"a {len(card.stages)}-stage merge of the models below: "
            "each stage merges models or earlier stages' outputs, "
            f"the last a {method} merge{on_base}"
        )
    elif card.experts:
        routed = sum(not e.shared for e in card.experts)
        shared = len(card.experts) - routed
        what = (
            f"a mixture of experts ({card.architecture}: {routed} experts, {card.experts_per_token} per token"
            f"{f', {shared} shared' if shared else ''}) assembled from the models below{on_base}"
        )
    else:
        what = f"a {method} merge of the models below{on_base}"
    lines = [f"# {name}", "", f"{name} is {what}, made with mergehub.", ""]
    lines += ["## Parents", "", "| Model | Revision | License | Scores |", "|---|---|---|---|"]
    lines += [_parent_row(p, card.base) for p in card.parents]
    lines += _expert_lines(card) + _stage_lines(card)
    lines += _license_lines(warnings, license_id, "merge")
    if card.eval_results:
        lines += ["", "## Evaluation", "", "| Dataset | Metric | Value |", "|---|---|---|"]
        lines += [f"| {_cell(s.dataset_name)} | {_cell(s.metric)} | {s.value:.4g} |" for s in card.eval_results]
    lines += ["", "## MoE config" if card.experts else "## Recipe", "", _fence(card.recipe_yaml, "yaml")]
    if card.warnings:
        lines += ["", "Ignored by the merge, as mergekit ignores them:", ""]
        lines += [
            f"- `{w.location or 'recipe'}`{f' (line {w.line})' if w.line else ''}: {w.message}" for w in card.warnings
        ]
    lines += ["", "## Reproducibility", ""]
    lines.append("Versions: " + ", ".join(f"{package} {v}" for package, v in card.versions) + f"; seed: {card.seed}.")
    lines += ["", "| Shard | sha256 |", "|---|---|"] + [f"| {f} | `{sha}` |" for f, sha in card.shards]
    lines += _integrity_lines(card)
    lines += ["", "Rerun:", "", _fence(card.command, "bash")]
    if card.lineage_mermaid:
        lines += ["", "## Lineage", "", _fence(card.lineage_mermaid, "mermaid")]
    usage = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{card.repo_id}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{card.repo_id}")'
    )
    lines += ["", "## Usage", "", _fence(usage, "python"), ""]
    return "\n".join(lines)


def _prompts(prompts: Sequence[str]) -> str:
    return "<br>".join(f"`{_cell(p)}`" for p in prompts) or "—"


def _expert_lines(card: MergeCard) -> list[str]:
    """The experts table: each expert's model, and the prompts its router was initialised from."""
    if not card.experts:
        return []
    random = card.gate_mode in ("random", "uniform_random")
    how = (
        "they are drawn at random (seeded); the prompts are not used"
        if random
        else "positive prompts draw tokens to the expert, negative ones away"
    )
    lines = [
        "",
        "## Experts",
        "",
        f"Routers (`gate_mode: {card.gate_mode}`) are initialised from each expert's prompts: {how}.",
        "",
    ]
    lines += [
        "| Expert | Model | Positive prompts | Negative prompts | Noise / residual scale |",
        "|---|---|---|---|---|",
    ]
    by_ref = {p.ref: p for p in card.parents}
    routed = 0
    for expert in card.experts:
        parent = by_ref.get(expert.model)
        model = _model_link(parent) if parent else f"`{expert.model}`"
        scales = " / ".join("—" if v is None else f"{v:g}" for v in (expert.noise_scale, expert.residual_scale))
        label = "shared" if expert.shared else str(routed)
        routed += not expert.shared
        lines.append(
            f"| {label} | {_cell(model)} | {_prompts(expert.positive_prompts)} "
            f"| {_prompts(expert.negative_prompts)} | {scales} |"
        )
    return lines


def _stage_lines(card: MergeCard) -> list[str]:
    """Each stage in the order it ran: its name, method and inputs (its recipe is in the Recipe section)."""
    if not card.stages:
        return []
    lines = ["", "## Stages", "", "| Stage | Method | Inputs |", "|---|---|---|"]
    lines += [
        f"| {_cell(row.name or '(final)')} | `{row.method}` | {_cell(', '.join(row.inputs))} |" for row in card.stages
    ]
    return lines


def _integrity_lines(card: MergeCard) -> list[str]:
    """What the merge checked of its inputs in transit, and the tensors it found holding NaN or Inf."""
    lines = []
    if card.checked:
        verified = [name for name, ok, _ in card.checked if ok]
        lines += [
            "",
            f"Hub weight files verified against their sha256 as they streamed: {len(verified)} of {len(card.checked)}.",
        ]
        lines += [f"- not verified: `{name}` ({reason})" for name, ok, reason in card.checked if not ok]
    if card.non_finite:
        lines += ["", "> [!WARNING]", "> These tensors hold NaN or Inf values:"] + [
            f"> - {_cell(n)}" for n in card.non_finite
        ]
    return lines


def provenance(card: MergeCard) -> dict:
    """The card's machine-readable record (front matter key `mergehub`): recipe hash, pinned parents (and, under
    `adapters`, which of them are LoRA adapters merged into which parent), seed,
    and what the merge ignored (each warning's location, line and message).

    Reruns compare it to decide whether a merge is already up to date.
    """
    record = {
        "recipe_sha256": recipe_sha256(card.recipe_yaml),
        "parents": {p.ref: p.revision for p in card.parents},
        "seed": card.seed,
        "method": card.method,
        "version": dict(card.versions).get("mergehub"),
    }
    if adapters := {p.ref: p.adapter_of for p in card.parents if p.adapter_of}:
        record["adapters"] = adapters
    if card.checked:
        record["verified_inputs"] = [name for name, ok, _ in card.checked if ok]
        record["unverified_inputs"] = {name: reason for name, ok, reason in card.checked if not ok}
    if card.non_finite:
        record["non_finite"] = list(card.non_finite)
    if card.warnings:
        record["ignored"] = [{k: v for k, v in asdict(w).items() if v is not None} for w in card.warnings]
    return record


def render_card(card: MergeCard) -> ModelCard:
    """The model card: Hub metadata (base_model, merge relation, license, model-index), then the Markdown body."""
    license_id, warnings = resolve_license(card.parents)
    hub_parents = [p.ref for p in card.parents if p.is_hub]
    lineage = {"base_model": hub_parents, "base_model_relation": "merge"} if hub_parents else {}
    scores = [eval_result(s) for s in card.eval_results]
    data = ModelCardData(
        **lineage,
        library_name="transformers",
        license=license_id,
        tags=list(TAGS) + ([MOE_TAG] if card.experts else []),
        model_name=card.repo_id.split("/")[-1] if scores else None,
        eval_results=scores or None,
        **{MERGEHUB_KEY: provenance(card)},
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(card, license_id, warnings)}")


@dataclass(frozen=True)
class AdapterCard:
    """Everything the card of an extracted LoRA adapter shows: its base, the fine-tune it comes from, how well each
    module's factors reproduce the fine-tune's delta, and how to rerun the extraction."""

    repo_id: str
    base: ParentCard
    source: ParentCard
    spec_yaml: str
    """The extraction as a file (`extract_lora: {base, model, rank, ...}`), hashed for reruns."""
    modules: tuple[tuple[str, int, float], ...]
    """(module, rank, relative error ‖delta − B·A‖_F / ‖delta‖_F) of each module extracted as LoRA."""
    saved: tuple[str, ...]
    """modules_to_save: modules saved whole."""
    files: tuple[tuple[str, str], ...]  # (filename, sha256)
    versions: tuple[tuple[str, str], ...]
    command: str
    svd: str
    vocab_sizes: tuple[int, int] | None = None
    """(base, fine-tune) input embedding rows, when they differ."""
    lineage_mermaid: str | None = None
    warnings: tuple[RecipeWarning, ...] = ()


def adapter_card(
    repo_id: str,
    plan: Plan,
    measures: dict[str, dict[str, float]],
    shards: Iterable[ShardResult],
    *,
    spec_yaml: str,
    command: str,
    base: ParentCard,
    source: ParentCard,
    lineage_mermaid: str | None = None,
    vocab_sizes: tuple[int, int] | None = None,
) -> AdapterCard:
    """The card data of a finished extraction: each LoRA module's rank and reconstruction error (the run's measures)."""
    modules = tuple(
        (job.name.removesuffix(".weight"), int(measures[job.name]["rank"]), measures[job.name]["relative_error"])
        for job in plan.jobs
        if job.name in measures and "relative_error" in measures[job.name]
    )
    svd = next((dict(job.params).get("svd", "exact") for job in plan.jobs if job.outputs), "exact")
    return AdapterCard(
        repo_id=repo_id,
        base=base,
        source=source,
        spec_yaml=spec_yaml,
        modules=modules,
        saved=tuple(plan.config["modules_to_save"]),
        files=tuple((s.filename, s.sha256) for s in shards),
        versions=tuple((p, _version(p)) for p in ("mergehub", "torch", "peft")),
        command=command,
        svd=svd,
        vocab_sizes=vocab_sizes,
        lineage_mermaid=lineage_mermaid,
        warnings=plan.warnings,
    )


def _adapter_body(card: AdapterCard, license_id: str, warnings: list[str]) -> str:
    name = card.repo_id.split("/")[-1]
    errors = [e for _, _, e in card.modules]
    ranks = sorted({r for _, r, _ in card.modules})
    lines = [
        f"# {name}",
        "",
        f"{name} is a LoRA adapter for {_model_link(card.base)}, extracted with mergehub from "
        f"{_model_link(card.source)}: the fine-tune's change of each module, factored by truncated SVD "
        f"({'exact' if card.svd == 'exact' else 'randomized'}).",
        "",
    ]
    if card.vocab_sizes:
        verb = "extended" if card.vocab_sizes[1] > card.vocab_sizes[0] else "reduced"
        lines += [
            "> [!WARNING]",
            f"> The fine-tune's vocabulary is {verb} from {card.vocab_sizes[0]} to {card.vocab_sizes[1]} tokens: "
            f"call `model.resize_token_embeddings({card.vocab_sizes[1]})` before loading this adapter.",
            "",
        ]
    lines += ["## Parents", "", "| Model | Revision | License | Scores |", "|---|---|---|---|"]
    lines += [_parent_row(card.base, card.base.ref), _parent_row(card.source, None, " (the fine-tune)")]
    lines += _license_lines(warnings, license_id, "adapter")
    lines += ["", "## Reconstruction", ""]
    lines.append(
        f"{len(card.modules)} modules as LoRA, rank {ranks[0] if len(ranks) == 1 else f'{ranks[0]} to {ranks[-1]}'}; "
        f"relative error ‖delta − B·A‖ / ‖delta‖: mean {sum(errors) / len(errors):.4g}, max {max(errors):.4g}."
        + (f" Saved whole: {', '.join(f'`{m}`' for m in card.saved)}." if card.saved else "")
    )
    lines += ["", "| Module | Rank | Relative error |", "|---|---|---|"]
    lines += [f"| `{_cell(m)}` | {r} | {e:.4g} |" for m, r, e in card.modules]
    if card.warnings:
        lines += ["", "Notes from the extraction:", ""] + [f"- {w.message}" for w in card.warnings]
    lines += ["", "## Reproducibility", ""]
    lines.append("Versions: " + ", ".join(f"{package} {v}" for package, v in card.versions) + ".")
    lines += ["", "| File | sha256 |", "|---|---|"] + [f"| {f} | `{sha}` |" for f, sha in card.files]
    lines += [
        "",
        "Rerun:",
        "",
        _fence(card.command, "bash"),
        "",
        "Or as a file (the GitHub Action runs these too):",
        "",
        _fence(card.spec_yaml, "yaml"),
    ]
    if card.lineage_mermaid:
        lines += ["", "## Lineage", "", _fence(card.lineage_mermaid, "mermaid")]
    usage = (
        "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{card.base.ref}"'
        + (f', revision="{card.base.revision}"' if card.base.revision else "")
        + ")\n"
        + f'model = PeftModel.from_pretrained(base, "{card.repo_id}")'
    )
    lines += ["", "## Usage", "", _fence(usage, "python"), ""]
    return "\n".join(lines)


def render_adapter_card(card: AdapterCard) -> ModelCard:
    """The adapter's model card: Hub metadata (`base_model` and `base_model_relation: adapter`, license, the mergehub
    record of parents, spec hash and errors), then the Markdown body."""
    license_id, warnings = resolve_license([card.base, card.source])
    errors = [e for _, _, e in card.modules]
    record = {
        "recipe_sha256": recipe_sha256(card.spec_yaml),
        "parents": {card.base.ref: card.base.revision, card.source.ref: card.source.revision},
        "adapter_for": card.base.ref,
        "extracted_from": card.source.ref,
        "method": "extract_lora",
        "svd": card.svd,
        "version": dict(card.versions).get("mergehub"),
        "relative_error": {"mean": sum(errors) / len(errors), "max": max(errors)},
    }
    if card.warnings:
        record["notes"] = [w.message for w in card.warnings]
    lineage = {"base_model": card.base.ref, "base_model_relation": "adapter"} if card.base.is_hub else {}
    data = ModelCardData(
        **lineage,
        library_name="peft",
        license=license_id,
        tags=["lora", "peft", "extracted-lora", "mergehub"],
        **{MERGEHUB_KEY: record},
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_adapter_body(card, license_id, warnings)}")
