"""A GGUF output directory: files written in a hidden staging directory, moved into place only once complete;
and its push to a Hub repo of its own."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

from mergehub.gguf.card import gguf_card, render_gguf_card
from mergehub.gguf.export import GGUFFile, GGUFPlan, GGUFSink, plan_gguf
from mergehub.gguf.metadata import ModelInfo
from mergehub.output import create_staging, move_into_place, resolve_target
from mergehub.plan import Plan
from mergehub.publish.lineage import LineageGraph
from mergehub.publish.push import hub_errors
from mergehub.units import format_size
from mergehub.writer import writing

__all__ = ["GGUFResult", "GGUFOutput", "open_gguf", "push_gguf"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFResult:
    """Finished GGUF files: their directory, the repo their card names, each file, and what the export ignored."""

    out_dir: Path
    repo_id: str
    files: tuple[GGUFFile, ...]
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line per file: type, size, sha256."""
        lines = [f"GGUF -> {self.out_dir}"]
        lines += [f"  {f.file_type:5} {format_size(f.size):>9}  sha256 {f.sha256}  {f.filename}" for f in self.files]
        return "\n".join(lines + [f"  note: {w}" for w in self.warnings])


class GGUFOutput:
    """Writes a `GGUFPlan` into a staging directory beside `target`; `finish` adds the card and moves it into place."""

    def __init__(self, plan: GGUFPlan, target: Path, *, overwrite: bool) -> None:
        self.plan = plan
        self.target = resolve_target(target, overwrite=overwrite, markers=("*.gguf",))
        self.staging = create_staging(self.target)
        self.sink = GGUFSink(plan, self.staging)

    def finish(self, repo_id: str, card: Callable[[tuple[GGUFFile, ...]], ModelCard]) -> GGUFResult:
        """Close the files, write their `card` as README.md, and move the directory to its target."""
        with writing(self.staging):
            files = self.sink.finish()
        with writing(self.staging / "README.md"):
            (self.staging / "README.md").write_text(str(card(files)), encoding="utf-8")
        move_into_place(self.staging, self.target)
        return GGUFResult(self.target, repo_id, files, self.plan.warnings)

    def finish_card(
        self,
        repo_id: str,
        source: str,
        *,
        source_on_hub: bool,
        readme: str | bytes | None,
        command: str,
        lineage: LineageGraph | None,
    ) -> GGUFResult:
        """`finish`, with the card of a GGUF repo made from `source` (its `readme` gives the license and method)."""
        arch = self.plan.model.family.arch.name.lower()
        return self.finish(
            repo_id,
            lambda files: render_gguf_card(
                gguf_card(
                    repo_id,
                    source,
                    source_on_hub=source_on_hub,
                    source_readme=readme,
                    architecture=arch,
                    files=files,
                    command=command,
                    lineage=lineage,
                )
            ),
        )

    def close(self) -> None:
        """Remove what a failed run left."""
        self.sink.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def open_gguf(
    plan: Plan,
    *,
    name: str,
    types: Sequence[str] | str,
    target: Path,
    overwrite: bool,
    base_models: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> GGUFOutput:
    """Lay out the GGUF files of the model a plan writes (from the plan alone, before any weight is read), open in
    staging.

    The GGUF layout stays a plan of its own (`GGUFPlan`), derived from the `Plan` by this pure step: it needs the
    optional `gguf` package, and its types are an output format chosen per run, not part of the merge.
    """
    gguf_plan = plan_gguf(
        plan.config,
        [(job.name, job.shape) for job in plan.jobs],
        plan.output_files(),
        name=name,
        types=types,
        info=ModelInfo(name, base_models=tuple(base_models), tags=tuple(tags)),
    )
    for warning in gguf_plan.warnings:
        logger.warning("GGUF: %s", warning)
    return GGUFOutput(gguf_plan, target, overwrite=overwrite)


def push_gguf(api: HfApi, repo_id: str, result: GGUFResult) -> Any:
    """Commit a GGUF directory (files and card) to `repo_id`, a repo `prepare_repo` checked; returns the commit.

    Raises:
        PublishError: the upload failed.
    """
    with hub_errors(f"Pushing the GGUF files to {repo_id}", hint="Nothing was committed; rerun to try again."):
        operations = [
            CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
            for p in sorted(result.out_dir.iterdir())
            if p.is_file()
        ]
        return api.create_commit(repo_id, operations, commit_message="Add GGUF files made with mergehub")
