"""Real signals on a real `mergehub` process stuck on a Hub that stopped answering: it stops at once and cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi


def _upload(hub, repo_id: str, directory: Path) -> None:
    hub.add_repo(repo_id, {p.name: p for p in directory.iterdir() if p.is_file()})


@pytest.fixture
def stuck(hub, family, tmp_path):
    """A recipe over two Hub models whose weight reads hang (their headers are served), and the env to run it."""
    _upload(hub, "org/base", family[0])
    _upload(hub, "org/ft", family[1])
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "merge_method": "linear",
                "models": [{"model": m, "parameters": {"weight": 1}} for m in ("org/base", "org/ft")],
            }
        )
    )
    hub.fail_next(".safetensors", "hang", times=1000, after=2)  # one header read per model, then every read hangs
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": "tok-alice",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_XET": "1",
        "TMPDIR": str(tmp_path / "tmp"),
        "PYTHONUNBUFFERED": "1",
    }
    return recipe, env


def _stop_when_stuck(hub, args: list[str], env: dict, cwd: Path, sig: int) -> tuple[subprocess.CompletedProcess, float]:
    """Start `mergehub ARGS`, wait until the server holds one of its reads, send `sig`; the result and seconds to
    exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mergehub", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while hub.held == 0:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the merge never reached its weight reads"
            time.sleep(0.05)
        time.sleep(0.5)  # every reader thread is blocked now
        sent = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_stops_a_merge_stuck_on_the_network_within_a_second_and_leaves_nothing(hub, stuck, tmp_path, sig):
    recipe, env = stuck
    run, seconds = _stop_when_stuck(hub, ["merge", str(recipe), "out", "--no-progress"], env, tmp_path, sig)
    assert run.returncode == 128 + sig, run.stderr
    assert seconds < 2.0, f"took {seconds:.1f} s to stop"
    assert "Traceback" not in run.stderr and "cleaned up" in run.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_sigterm_during_a_push_deletes_the_repo_it_created_and_its_temporary_directory(hub, stuck, tmp_path):
    recipe, env = stuck
    run, seconds = _stop_when_stuck(
        hub, ["merge", str(recipe), "--push", "fresh-merge", "--no-progress"], env, tmp_path, signal.SIGTERM
    )
    assert run.returncode == 143, run.stderr
    assert seconds < 2.0, f"took {seconds:.1f} s to stop"
    assert not HfApi(endpoint=hub.endpoint, token="tok-alice").repo_exists("alice/fresh-merge")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_the_next_push_removes_what_a_killed_one_left_in_the_temporary_directory(tmp_path, monkeypatch, caplog):
    from mergehub.publish.push import staging_directory

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    left = tmp_path / f"mergehub-push-{dead.pid}-abc123"
    (left / "model" / ".model.partial-1-x").mkdir(parents=True)
    target, scratch = staging_directory(None)
    try:
        assert not left.exists() and target.parent.name.startswith(f"mergehub-push-{os.getpid()}-")
        assert "Removed 1 push directories left by earlier runs" in caplog.text
    finally:
        scratch.cleanup()


def test_the_action_stops_on_sigterm_with_an_annotation_and_code_143(tmp_path, monkeypatch, capsys):
    import json

    from mergehub.interfaces import action

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "a.yml").write_text("merge_method: linear\nmodels:\n  - model: org/a\n")
    (tmp_path / "event.json").write_text(json.dumps({}))

    def merge(self, path):
        os.kill(os.getpid(), signal.SIGTERM)  # what a runner does to a cancelled job
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(action._Runner, "merge", merge)
    env = {
        "GITHUB_WORKSPACE": str(tmp_path),
        "GITHUB_EVENT_NAME": "workflow_dispatch",
        "GITHUB_EVENT_PATH": str(tmp_path / "event.json"),
        "INPUT_NAMESPACE": "team",
    }
    assert action.main(env) == 143
    assert "::error::The run was stopped (SIGTERM) during recipes/a.yml" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
