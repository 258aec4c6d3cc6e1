"""`mergehub space deploy` against the local Hub: the files that land, the metadata, and that the wheel installs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download

from mergehub.interfaces.cli import main
from mergehub.interfaces.space.deploy import requirements


def test_requirements_install_the_uploaded_wheel():
    template = (Path(__file__).parents[2] / "space" / "requirements.txt").read_text()
    assert requirements(template, "http://hub/spaces/a/b/resolve/main/wheels/m.whl") == (
        "mergehub[space,eval] @ http://hub/spaces/a/b/resolve/main/wheels/m.whl\ngradio[oauth]==6.31.0\n"
    )


def test_deploy_creates_the_space_with_app_metadata_and_wheel(hub, tmp_path, capsys):
    assert main(["space", "deploy", "alice/merger", "--hardware", "cpu-upgrade"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{hub.endpoint}/spaces/alice/merger"
    assert out[-2] == "Requested hardware: cpu-upgrade."
    api = HfApi()
    info = api.space_info("alice/merger")
    assert info.sdk == "gradio" and info.runtime.requested_hardware == "cpu-upgrade"
    files = set(api.list_repo_files("alice/merger", repo_type="space"))
    (wheel,) = [f for f in files if f.startswith("wheels/")]
    assert files == {".gitattributes", "app.py", "README.md", "requirements.txt", wheel}
    assert out[-3] == f"Created alice/merger with app.py, README.md, requirements.txt, {wheel}."
    assert info.card_data.sdk_version == "6.31.0" and info.card_data.get("hf_oauth") is True
    reqs = Path(hf_hub_download("alice/merger", "requirements.txt", repo_type="space")).read_text()
    url = f"{hub.endpoint}/spaces/alice/merger/resolve/main/{wheel}"
    assert reqs.splitlines()[0] == f"mergehub[space,eval] @ {url}"
    assert "OWNER" not in reqs and "git+" not in reqs

    path = Path(hf_hub_download("alice/merger", wheel, repo_type="space"))
    names = zipfile.ZipFile(path).namelist()
    assert "mergehub/interfaces/space/page.py" in names and "mergehub/eval_tasks/facts.test.jsonl" in names
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(path),
        ],
        check=True,
    )
    shown = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('mergehub'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == "0.1.0"
    assert (venv / "bin" / "mergehub").exists()

    assert main(["space", "deploy", "alice/merger"]) == 0  # an update: the same files, one wheel
    again = capsys.readouterr()
    assert again.out.splitlines()[-2].startswith("Updated alice/merger with ")
    assert len([f for f in api.list_repo_files("alice/merger", repo_type="space") if f.startswith("wheels/")]) == 1


def test_deploy_to_someone_elses_space_says_sign_in(hub, capsys):
    assert main(["space", "deploy", "bob/theirs"]) == 1
    err = capsys.readouterr().err
    assert "Creating the Space bob/theirs failed" in err
    assert "pytest" not in err and "Traceback" not in err
