"""`mergehub space deploy USER/SPACE`: create or update the Space with the app, its README metadata and mergehub
itself, as a wheel built from this checkout and uploaded beside the app (the Space needs no git URL).

The Space's `requirements.txt` installs that wheel from the Space's own files (`resolve/main/wheels/...`),
with the `space` and `eval` extras, and pins gradio to the README's `sdk_version` (the Space image needs it).
No gradio here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mergehub.errors import MergehubError, PublishError
from mergehub.publish.push import hub_errors

__all__ = ["SPACE_FILES", "Deployed", "checkout_root", "build_wheel", "requirements", "deploy_space"]

SPACE_FILES = ("app.py", "README.md")
"""The files of the checkout's `space/` folder uploaded as they are (`requirements.txt` is written for the wheel)."""
_WHEELS = "wheels"
_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "mergehub")


@dataclass(frozen=True)
class Deployed:
    """Where the Space is, and what was uploaded."""

    url: str
    space_id: str
    wheel: str
    files: tuple[str, ...]
    created: bool


def checkout_root() -> Path:
    """The mergehub checkout this package runs from (with `space/` and `pyproject.toml`).

    Raises:
        MergehubError: mergehub runs from an installed wheel, which has no `space/` folder.
    """
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file() or not (root / "space" / "app.py").is_file():
        raise MergehubError(
            "`mergehub space deploy` needs a checkout of mergehub: the installed package has no space/ folder.",
            hint="Clone the repository, `pip install -e '.[space]'` in it, and run the command from there.",
        )
    return root


def build_wheel(root: Path, out_dir: Path) -> Path:
    """Build mergehub's wheel from the checkout at `root` into `out_dir` (in a copy: the checkout stays clean).

    Raises:
        MergehubError: the build failed (its last lines are in the message).
    """
    with tempfile.TemporaryDirectory(prefix="mergehub-wheel-") as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in _SOURCES:
            path = root / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif path.is_file():
                shutil.copy2(path, source / name)
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        done = subprocess.run([*command, "-w", str(out_dir), str(source)], capture_output=True, text=True)
    wheels = sorted(out_dir.glob("mergehub-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise MergehubError(
            f"Building mergehub's wheel failed:\n{tail}", hint="pip install setuptools wheel, then rerun."
        )
    return wheels[-1]


def requirements(template: str, wheel_url: str) -> str:
    """The Space's requirements.txt: the checkout's, with its `mergehub` line replaced by the uploaded wheel's URL."""
    lines = [f"mergehub[space,eval] @ {wheel_url}"]
    for line in template.splitlines():
        if not line.strip().startswith(("#", "mergehub")) and line.strip():
            lines.append(line.strip())
    return "\n".join(lines) + "\n"


def deploy_space(
    space_id: str, *, hardware: str | None = None, private: bool = False, token: str | bool | None = None
) -> Deployed:
    """Create (or update) the Space `space_id` with this checkout's app and a wheel of mergehub; returns its URL.

    Raises:
        MergehubError: not a checkout, or the wheel did not build.
        PublishError: no token, no rights, or the Hub refused an upload.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    if space_id.count("/") != 1 or not all(space_id.split("/")):
        raise PublishError(f"{space_id!r} is not a Space ID.", hint="Write it as USER/SPACE (or ORG/SPACE).")
    root = checkout_root()
    api = HfApi(token=token)
    endpoint = api.endpoint.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="mergehub-deploy-") as tmp:
        wheel = build_wheel(root, Path(tmp))
        remote = f"{_WHEELS}/{wheel.name}"
        url = f"{endpoint}/spaces/{space_id}/resolve/main/{remote}"
        template = (root / "space" / "requirements.txt").read_text(encoding="utf-8")
        with hub_errors(f"Creating the Space {space_id}", remedy="sign-in"):
            created = not api.repo_exists(space_id, repo_type="space")
            api.create_repo(
                space_id,
                repo_type="space",
                space_sdk="gradio",
                space_hardware=hardware if created else None,
                private=private,
                exist_ok=True,
            )
            if hardware and not created:
                api.request_space_hardware(space_id, hardware)
            stale = [
                f
                for f in api.list_repo_files(space_id, repo_type="space")
                if f.startswith(f"{_WHEELS}/") and f != remote
            ]
        operations = [CommitOperationAdd(name, str(root / "space" / name)) for name in SPACE_FILES]
        operations += [
            CommitOperationAdd("requirements.txt", requirements(template, url).encode()),
            CommitOperationAdd(remote, str(wheel)),
            *(CommitOperationDelete(f) for f in stale),
        ]
        with hub_errors(f"Uploading the app to {space_id}"):
            api.create_commit(space_id, operations, repo_type="space", commit_message=f"Deploy mergehub ({wheel.name})")
    files = (*SPACE_FILES, "requirements.txt", remote)
    return Deployed(f"{endpoint}/spaces/{space_id}", space_id, wheel.name, files, created)
