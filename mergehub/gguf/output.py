"""A GGUF output directory: files written in a hidden staging directory, moved into place only once complete;
and its push to a Hub repo of its own."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError

from mergehub.errors import PublishError
from mergehub.gguf.export import GGUFFile, GGUFPlan, GGUFSink
from mergehub.output import create_staging, move_into_place, resolve_target
from mergehub.writer import writing

__all__ = ["GGUFResult", "GGUFOutput", "push_gguf"]


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
        lines += [f"  {f.file_type:5} {f.size / 1e9:6.2f} GB  sha256 {f.sha256}  {f.filename}" for f in self.files]
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

    def close(self) -> None:
        """Remove what a failed run left."""
        self.sink.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def push_gguf(api: HfApi, repo_id: str, result: GGUFResult) -> Any:
    """Commit a GGUF directory (files and card) to `repo_id`, a repo `prepare_repo` checked; returns the commit.

    Raises:
        PublishError: the upload failed.
    """
    operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in sorted(result.out_dir.iterdir()) if p.is_file()]
    try:
        return api.create_commit(repo_id, operations, commit_message="Add GGUF files made with mergehub")
    except HfHubHTTPError as e:
        raise PublishError(f"Pushing the GGUF files to {repo_id} failed: {e}.", hint="Nothing was committed; rerun to try again.") from e
