"""The Extract LoRA tab's jobs: a LoRA adapter of a Hub fine-tune relative to its Hub base, dry-run or pushed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mergehub import api
from mergehub.errors import ModelReferenceError, RecipeError
from mergehub.interfaces.space.job import Out, Session, check_size, extract_stream, run_job
from mergehub.interfaces.space.safety import check_model_reference, check_repo_name, scrub, user_message
from mergehub.interfaces.space.text import WORKING, status
from mergehub.recipe import ModelRef
from mergehub.units import format_size

__all__ = ["extraction_spec", "extraction_dry_run", "extract"]

MAX_RANK = 1024


def extraction_spec(
    base: str, model: str, rank: float | None, rank_energy: float | None, embed_lora: bool
) -> api.ExtractionSpec:
    """The extraction the tab's fields ask for: two Hub references (a fine-tune may be `model+adapter`) and options.

    Raises:
        ModelReferenceError: a reference is not a Hub model, or names a folder on the server.
        RecipeError: the rank or the energy is out of range.
    """
    refs = []
    for label, text in (("base", base), ("fine-tune", model)):
        ref = ModelRef.parse(check_model_reference(text))
        for part in (ref.model, ref.adapter):
            if part is not None and Path(part.path).exists():
                raise ModelReferenceError(
                    f"The {label} {str(part)!r} is not allowed here.", hint="Use another Hub model ID."
                )
        refs.append(ref)
    if rank is None or rank != int(rank) or not 1 <= rank <= MAX_RANK:
        raise RecipeError(
            f"The rank must be a whole number from 1 to {MAX_RANK}.", hint="Ranks of 8 to 128 are common."
        )
    energy = float(rank_energy) if rank_energy else None
    options = api.ExtractOptions(rank=int(rank), rank_energy=energy, embed_lora=bool(embed_lora))
    options.check()
    return api.ExtractionSpec(refs[0], refs[1], options)


def extraction_dry_run(
    base: str,
    model: str,
    rank: float | None,
    rank_energy: float | None,
    embed_lora: bool,
    token: str | bool,
    max_lines: int = 120,
) -> str:
    """The plan of the extraction (configs and headers only), or why it cannot be done."""
    try:
        spec = extraction_spec(base, model, rank, rank_energy, embed_lora)
        plan = api.plan_extraction(str(spec.base), str(spec.model), spec.options, token=token)
    except Exception as e:  # noqa: BLE001 - shown to the visitor, scrubbed
        return "Plan failed:\n" + user_message(e, [token])
    lines = plan.describe().splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... {len(lines) - max_lines} more lines"]
    return scrub("\n".join([*lines, "Plan OK: no problems found."]), [token])


def extract(
    base: str,
    model: str,
    rank: float | None,
    rank_energy: float | None,
    embed_lora: bool,
    repo_name: str,
    private: bool,
    session: Session | None,
    oauth_token: Any,
    progress: Any = None,
    *,
    runner: Callable[..., Iterator[tuple[str, Any]]] = extract_stream,
    device: str = "auto",
    refresh_seconds: float = 0.3,
) -> Iterator[tuple[str, str, str]]:
    """The Extract button: check, plan, extract and push the adapter, yielding (status, log, model card) as it goes."""

    def prepare(token: str, log: list[str], out: Out) -> Iterator[tuple[str, str, str]]:
        spec = extraction_spec(base, model, rank, rank_energy, embed_lora)
        repo_id = check_repo_name(repo_name)
        log.append(f"Checking {spec.base} and {spec.model} from their configs and headers...")
        yield out(status(WORKING, "Planning..."))
        plan = api.plan_extraction(str(spec.base), str(spec.model), spec.options, token=token)
        modules = sum(job.method == "extract_lora" for job in plan.jobs)
        saved = len(plan.config["modules_to_save"])
        log.append(
            f"Plan: {modules} modules as LoRA of rank up to {spec.options.rank}, {saved} module kind(s) saved whole; "
            f"read {format_size(plan.read_bytes)}."
        )
        log += [f"Note: {w.message}" for w in plan.warnings]
        check_size(plan, "extraction")
        log.append(f"Extracting into {repo_id} ({'private' if private else 'public'}).")
        return spec.to_yaml(), repo_id, plan.read_bytes + plan.write_bytes

    yield from run_job(
        prepare,
        private,
        session,
        oauth_token,
        progress,
        runner=runner,
        device=device,
        refresh_seconds=refresh_seconds,
        verb="Extracting",
        action="extract",
    )
