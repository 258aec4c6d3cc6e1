"""GGUF files pushed to a repo of their own on the local Hub server, with a card that leads back to the merge."""

from __future__ import annotations

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from mergehub import push_merge
from mergehub.api import convert_gguf, push_gguf_files
from tests.gguf_export.models import make_family_model, tokenizer_for

pytest.importorskip("gguf")


@pytest.fixture
def parents(hub, tmp_path):
    """A Qwen2 base and fine-tune uploaded to the Hub server as alice/base and alice/tuned."""
    tokenizer = tokenizer_for("qwen2")
    base = make_family_model("qwen2", tmp_path / "base", seed=0, tokenizer=tokenizer)
    tuned = make_family_model("qwen2", tmp_path / "tuned", seed=1, base=base, tokenizer=tokenizer)
    api = HfApi()
    for repo, folder in (("alice/base", base), ("alice/tuned", tuned)):
        api.create_repo(repo)
        (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# parent\n")
        api.upload_folder(repo_id=repo, folder_path=folder)
    return "alice/base", "alice/tuned"


def test_merge_with_gguf_pushes_both_repos(parents, tmp_path):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "merge_method": "linear",
                "dtype": "float32",
                "models": [
                    {"model": parents[0], "parameters": {"weight": 0.5}},
                    {"model": parents[1], "parameters": {"weight": 0.5}},
                ],
            }
        )
    )
    result, pushed = push_merge(recipe, "merged", gguf_types=["f16", "q8_0"])
    assert pushed.repo_id == "alice/merged" and pushed.gguf is not None and pushed.gguf.repo_id == "alice/merged-GGUF"
    files = set(HfApi().list_repo_files("alice/merged-GGUF"))
    assert {"merged-F16.gguf", "merged-Q8_0.gguf", "README.md"} <= files
    assert not any(f.endswith(".gguf") for f in HfApi().list_repo_files("alice/merged"))
    card = ModelCard.load("alice/merged-GGUF")
    assert card.data.base_model == "alice/merged" and card.data.base_model_relation == "quantized"
    assert card.data.library_name == "gguf" and card.data.license == "apache-2.0"
    for file in result.gguf.files:
        assert file.sha256 in card.text
    assert (
        "llama-cli -hf alice/merged-GGUF:Q8_0" in card.text and "ollama run hf.co/alice/merged-GGUF:Q8_0" in card.text
    )
    assert (
        "alice/base" in card.text and "alice/tuned" in card.text and "quantized" in card.text
    )  # lineage through the merge
    downloaded = hf_hub_download("alice/merged-GGUF", "merged-Q8_0.gguf")
    assert open(downloaded, "rb").read(4) == b"GGUF"


def test_convert_a_hub_model_streamed_and_push(parents, tmp_path):
    result = convert_gguf(parents[1], tmp_path / "out", "q8_0", repo_id="alice/tuned-GGUF")
    assert [f.filename for f in result.files] == ["tuned-Q8_0.gguf"]
    pushed = push_gguf_files(result)
    assert pushed.created and pushed.repo_id == "alice/tuned-GGUF"
    card = ModelCard.load("alice/tuned-GGUF")
    assert card.data.base_model == "alice/tuned" and "mergehub gguf alice/tuned out --types q8_0" in card.text
