"""Where a merge is written: a staging directory beside the target, moved into place only when complete.

- The target is resolved first (`.`, `a/..`, symlinks), so its parent and name are real.
- `--overwrite` replaces only a directory that holds a previous output of the same kind (a merge's
  `mergekit_config.yml` and weights; GGUF files), and never the current directory, one of its
  ancestors, or one holding the recipe.
- The staging directory `.NAME.partial-<pid>-<random>` sits beside the target; the swap renames
  the old directory aside, the new one in, then deletes the old one.
- Staging directories left by runs that were killed (their process is gone) or that are older than
  a day are removed by the next run into the same parent directory, which logs what it removed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from mergehub.errors import OutputError
from mergehub.recipe import RECIPE_FILE
from mergehub.writer import writing

__all__ = [
    "STALE_SECONDS",
    "MERGE_MARKERS",
    "resolve_target",
    "create_staging",
    "remove_stale",
    "remove_stale_directories",
    "move_into_place",
]

STALE_SECONDS = 24 * 3600
"""A staging directory this old is removed even if its process seems alive (its pid may have been reused)."""
logger = logging.getLogger(__name__)


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


MERGE_MARKERS = (RECIPE_FILE, "*.safetensors")
"""What a previous merge's directory holds: its recipe and its weights."""


def resolve_target(
    out_dir: str | os.PathLike,
    *,
    overwrite: bool,
    recipe: str | os.PathLike | None = None,
    markers: tuple[str, ...] = MERGE_MARKERS,
) -> Path:
    """The absolute output directory, checked before anything is read or written.

    `markers` are the glob patterns a directory must all match to count as a previous output of the same
    kind (a merge: its recipe and weights; a GGUF export: `*.gguf`), the only kind `overwrite` replaces.

    Raises:
        OutputError: the path is a file; the directory is not empty and `overwrite` is off; or `overwrite`
            would replace the current directory (or an ancestor), the recipe's directory, or a directory
            that does not hold a previous output.
    """
    target = Path(out_dir).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise OutputError(f"Output path {target} exists and is not a directory.", hint="Choose another output path.")
    if not target.is_dir() or not any(target.iterdir()):
        return target
    if not overwrite:
        raise OutputError(
            f"Output directory {target} is not empty.", hint="Choose a new directory, or pass --overwrite."
        )
    hint = "--overwrite only replaces the directory of a previous output of mergehub: choose a new output directory."
    if _inside(Path.cwd().resolve(), target):
        raise OutputError(
            f"--overwrite would replace {target}, which is (or contains) the current directory.", hint=hint
        )
    if recipe is not None and _inside(Path(recipe).resolve(), target):
        raise OutputError(f"--overwrite would replace {target}, which holds the recipe.", hint=hint)
    if not all(next(target.glob(pattern), None) for pattern in markers):
        raise OutputError(
            f"--overwrite would replace {target}, which does not hold a previous output (it lacks "
            f"{' or '.join(markers)}).",
            hint=hint,
        )
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_directories(parent: Path, prefix: str, what: str) -> list[Path]:
    """Delete the directories `{prefix}<pid>-*` in `parent` whose process is gone, or that are over a day old.

    Directories `{prefix}*` without a pid (from older versions) go by age alone; logs what it removed.
    """
    pattern = re.compile(rf"{re.escape(prefix)}(?:(\d+)-)?.*", re.S)
    removed = []
    try:
        candidates = [p for p in parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]
    except OSError:
        return []
    for path in candidates:
        pid = pattern.fullmatch(path.name)[1]  # type: ignore[index]
        try:
            old = time.time() - path.stat().st_mtime > STALE_SECONDS
        except OSError:
            continue
        if old or (pid is not None and int(pid) != os.getpid() and not _alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.warning(
            "Removed %d %s left by earlier runs that were stopped: %s",
            len(removed),
            what,
            ", ".join(p.name for p in removed),
        )
    return removed


def remove_stale(target: Path) -> list[Path]:
    """Delete the staging directories of `target` whose run is gone (its pid is dead) or that are over a day old."""
    return remove_stale_directories(target.parent, f".{target.name}.partial-", "staging directories")


def create_staging(target: Path) -> Path:
    """A fresh staging directory beside `target` (its parent is created), after removing stale ones.

    Raises:
        OutputError: the parent directory cannot be created or written.
    """
    with writing(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging


def move_into_place(staging: Path, target: Path) -> None:
    """Make the complete `staging` directory the `target`: the old one is renamed aside, the new one in, the old one
    deleted.

    Raises:
        OutputError: a rename failed; the previous target is then back in place.
    """
    if not target.exists():
        with writing(target):
            staging.rename(target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-old-", dir=target.parent))
    with writing(target):
        target.rename(aside / target.name)
        try:
            staging.rename(target)
        except OSError:
            (aside / target.name).rename(target)
            raise
    shutil.rmtree(aside, ignore_errors=True)
