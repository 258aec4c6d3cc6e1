"""The output directory: --overwrite replaces only a previous merge, staging beside the target, stale staging removed,
write errors."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mergehub import OutputError, run_merge
from tests.helpers import WORDS, make_tokenizer


def _recipe(family) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1}} for m in family[:2]]}


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mergehub", "merge", *args, "--no-progress"], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.parametrize("out", [".", "sub/..", "../d"])
def test_overwrite_never_replaces_the_current_directory(family, tmp_path, out):
    work = tmp_path / "d"
    work.mkdir()
    (work / "r.yml").write_text(yaml.safe_dump(_recipe(family)))
    (work / "notes.txt").write_text("precious")
    (work / "sub").mkdir()
    before = _tree(work)
    run = _cli(["r.yml", out, "--overwrite"], cwd=work)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "current directory" in run.stderr
    assert _tree(work) == before and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_overwrite_never_replaces_the_recipes_directory_nor_a_directory_that_is_not_a_merge(family, tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "r.yml").write_text(yaml.safe_dump(_recipe(family)))
    run = _cli([str(recipes / "r.yml"), str(recipes), "--overwrite"], cwd=tmp_path / "..")
    assert run.returncode == 1 and "holds the recipe" in run.stderr and (recipes / "r.yml").is_file()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    run = _cli([str(recipes / "r.yml"), str(other), "--overwrite"], cwd=tmp_path)
    assert run.returncode == 1 and "does not hold a previous output" in run.stderr and (other / "cat.jpg").is_file()


def test_overwrite_swaps_a_previous_merge_and_a_failed_rerun_keeps_it(family, write_recipe, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = run_merge(write_recipe(_recipe(family)), out)
    kept = _tree(out)
    recipe = write_recipe(
        {**_recipe(family), "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(family, [2, 1])]}
    )
    from mergehub import executor

    def broken(*args, **kwargs):
        raise OutputError("disk full (simulated)")

    monkeypatch.setattr(executor, "merge_job", broken)
    with pytest.raises(OutputError):
        run_merge(recipe, out, overwrite=True)
    assert _tree(out) == kept
    monkeypatch.undo()
    second = run_merge(recipe, out, overwrite=True)
    assert second.shards[0].sha256 != first.shards[0].sha256 and _tree(out) != kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "recipe.yml"]  # no staging or old copy left beside it


def test_staging_is_a_sibling_of_the_resolved_target_and_carries_the_pid(family, write_recipe, tmp_path, monkeypatch):
    seen = []
    (tmp_path / "a").mkdir()

    def watch(progress):
        seen.extend(p.name for p in tmp_path.iterdir() if ".partial-" in p.name)

    monkeypatch.chdir(tmp_path / "a")
    run_merge(write_recipe(_recipe(family)), "../b/../out", on_progress=watch)
    assert seen and all(name.startswith(f".out.partial-{os.getpid()}-") for name in seen)
    assert (tmp_path / "out" / "mergekit_config.yml").is_file()


def test_stale_staging_of_dead_or_old_runs_is_removed_and_logged(family, write_recipe, tmp_path, caplog):
    from mergehub.output import STALE_SECONDS, remove_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = {
        "dead": tmp_path / f".out.partial-{dead.pid}-abc",
        "old": tmp_path / f".out.partial-{os.getppid()}-def",
        "live": tmp_path / f".out.partial-{os.getppid()}-ghi",
        "legacy": tmp_path / ".out.partial-x1y2z3",
        "other": tmp_path / f".other.partial-{dead.pid}-jkl",
    }
    for path in leftovers.values():
        path.mkdir()
        (path / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 100)
    day_ago = time.time() - STALE_SECONDS - 60
    for key in ("old", "legacy"):
        os.utime(leftovers[key], (day_ago, day_ago))
    with caplog.at_level(logging.WARNING, logger="mergehub.output"):
        run_merge(write_recipe(_recipe(family)), tmp_path / "out")
    left = {key for key, path in leftovers.items() if path.exists()}
    assert left == {"live", "other"}
    assert "Removed 3 staging directories left by earlier runs" in caplog.text
    assert remove_stale(tmp_path / "out") == []


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "where", ["shard data", "shard close", "index", "config", "tokenizer", "card", "parent directory"]
)
def test_a_full_disk_is_an_output_error_with_a_hint_never_a_traceback(
    family, write_recipe, tmp_path, monkeypatch, capsys, where
):
    import builtins

    from mergehub.interfaces.cli import main

    real_open = builtins.open

    class FullFile:
        """A file whose writes (or close) fail like a full disk."""

        def __init__(self, handle, fail_on):
            self.handle, self.fail_on = handle, fail_on

        def write(self, data):
            if self.fail_on == "write":
                _enospc()
            return self.handle.write(data)

        def close(self):
            self.handle.close()
            if self.fail_on == "close":
                _enospc()

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    names = {
        "shard data": ".safetensors",
        "shard close": ".safetensors",
        "index": "index.json",
        "config": "config.json",
        "tokenizer": "tokenizer",
        "card": "README.md",
    }

    def full_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if "w" in mode and where in names and names[where] in str(path) and ".partial-" in str(path):
            return FullFile(handle, "close" if where == "shard close" else "write")
        return handle

    model = tmp_path / "with-tokenizer"
    shutil.copytree(family[0], model)
    for name, data in make_tokenizer(WORDS).items():
        (model / name).write_bytes(data)
    recipe = write_recipe(
        {
            "merge_method": "linear",
            "base_model": str(model),
            "models": [
                {"model": str(model), "parameters": {"weight": 1}},
                {"model": str(family[1]), "parameters": {"weight": 1}},
            ],
        }
    )
    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr("pathlib.Path.write_bytes", lambda self, data: full_open(self, "wb").write(data))
    monkeypatch.setattr(
        "pathlib.Path.write_text", lambda self, text, encoding=None: full_open(self, "w", encoding=encoding).write(text)
    )
    if where == "parent directory":
        monkeypatch.setattr("mergehub.output.tempfile.mkdtemp", _enospc)
    code = main(["merge", str(recipe), str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert (
        "error: Cannot write" in err
        and "No space left on device" in err
        and "hint: The disk (or your quota) is full" in err
    )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
