"""Pushing to the local Hub server: shards upload during the merge, one commit, nothing left on failure."""

from __future__ import annotations

import hashlib

import pytest
from huggingface_hub import HfApi

from mergehub import PublishError, SourceError, push_merge
from mergehub.sources.local import LocalSource


def _recipe(family) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1}} for m in family]}


def test_push_uploads_during_merge_and_commits_once(hub, family, write_recipe, tmp_path):
    received_at_progress = []
    result, pushed = push_merge(
        write_recipe(_recipe(family)),
        "merged",
        out_shard_bytes=150_000,
        on_progress=lambda p: received_at_progress.append(hub.bytes_received),
    )
    assert pushed.repo_id == "alice/merged" and pushed.created
    assert received_at_progress[-1] > 0, "shards must upload while tensors are still being merged"
    api = HfApi()
    files = set(api.list_repo_files("alice/merged"))
    assert {s.filename for s in result.shards} <= files
    assert {"config.json", "model.safetensors.index.json", "mergekit_config.yml", "generation_config.json"} <= files
    commits = api.list_repo_commits("alice/merged")
    assert len(commits) == 2  # the repo's creation, then the whole model in one commit
    from huggingface_hub import hf_hub_download

    for shard in result.shards:
        local = hf_hub_download("alice/merged", shard.filename, revision=pushed.commit_sha)
        assert hashlib.sha256(open(local, "rb").read()).hexdigest() == shard.sha256


def test_push_keeps_a_local_copy_when_asked(hub, family, write_recipe, tmp_path):
    result, _ = push_merge(
        write_recipe(_recipe(family[:2])), "alice/kept", out_dir=tmp_path / "out", out_shard_bytes=150_000
    )
    assert all((tmp_path / "out" / s.filename).exists() for s in result.shards)


def test_failed_merge_leaves_no_commit_and_deletes_the_new_repo(hub, family, write_recipe, monkeypatch):
    original = LocalSource.read

    def failing(self, name):
        if name == "model.layers.3.mlp.up_proj.weight":
            raise SourceError("disk went away")
        return original(self, name)

    monkeypatch.setattr(LocalSource, "read", failing)
    with pytest.raises(SourceError):
        push_merge(write_recipe(_recipe(family)), "alice/broken", out_shard_bytes=100_000)
    assert not HfApi().repo_exists("alice/broken")


def test_failure_in_an_existing_repo_leaves_it_untouched(hub, family, write_recipe, monkeypatch):
    push_merge(write_recipe(_recipe(family[:2])), "alice/again")
    before = HfApi().list_repo_commits("alice/again")
    monkeypatch.setattr(LocalSource, "read", lambda self, name: (_ for _ in ()).throw(SourceError("gone")))
    with pytest.raises(SourceError):
        push_merge(write_recipe(_recipe(family[:2])), "alice/again")
    assert HfApi().list_repo_commits("alice/again") == before


@pytest.mark.parametrize("failure", [OSError("connection reset by peer"), "network"])
def test_an_upload_failing_outside_http_is_a_publish_error_and_leaves_nothing(
    hub, family, write_recipe, monkeypatch, failure
):
    from mergehub.sources.hub import HTTPError

    error = HTTPError("connection refused") if failure == "network" else failure

    def preupload(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(HfApi, "preupload_lfs_files", preupload)
    with pytest.raises(PublishError, match=r"Uploading model-00001-of-\d+\.safetensors to alice/cut failed") as info:
        push_merge(write_recipe(_recipe(family)), "alice/cut", out_shard_bytes=100_000)
    assert info.value.hint and info.value.__cause__ is error
    assert not HfApi().repo_exists("alice/cut")


def test_refuses_a_repo_mergehub_did_not_make(hub, family, write_recipe):
    hub.add_repo("alice/handmade", {"README.md": b"---\nlicense: mit\n---\nmine"})
    with pytest.raises(PublishError, match="not made by mergehub") as info:
        push_merge(write_recipe(_recipe(family[:2])), "alice/handmade")
    assert "--force" in info.value.hint
    _, pushed = push_merge(write_recipe(_recipe(family[:2])), "alice/handmade", force=True)
    assert not pushed.created


def test_no_token_is_a_clear_error(hub, family, write_recipe, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(PublishError, match="No Hugging Face token") as info:
        push_merge(write_recipe(_recipe(family[:2])), "nobody/x")
    assert "HF_TOKEN" in info.value.hint


def test_card_is_pushed_with_lineage_and_checksums(hub, family, write_recipe):
    from huggingface_hub import ModelCard

    hub.add_repo(
        "org/base", {p.name: p for p in family[0].iterdir()} | {"README.md": b"---\nlicense: apache-2.0\n---\n"}
    )
    hub.add_repo(
        "org/ft",
        {p.name: p for p in family[1].iterdir()}
        | {"README.md": b"---\nlicense: apache-2.0\nbase_model: org/base\n---\n"},
    )
    recipe = {
        "merge_method": "slerp",
        "base_model": "org/base",
        "models": [{"model": "org/base"}, {"model": "org/ft"}],
        "parameters": {"t": 0.5},
    }
    result, pushed = push_merge(write_recipe(recipe), "alice/slerped")
    card = ModelCard.load("alice/slerped")
    assert card.data.base_model == ["org/base", "org/ft"] and card.data.base_model_relation == "merge"
    assert card.data.license == "apache-2.0" and "mergehub" in card.data.tags
    assert all(s.sha256 in card.text for s in result.shards)
    assert "```mermaid" in card.text and hub.revision_sha("org/ft") in card.text


def test_card_command_recards_a_local_merge(family, write_recipe, tmp_path, capsys):
    from mergehub import run_merge
    from mergehub.interfaces.cli import main

    result = run_merge(write_recipe(_recipe(family[:2])), tmp_path / "out")
    (tmp_path / "out" / "README.md").unlink()
    assert main(["card", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "README.md").read_text()
    assert all(s.sha256 in text for s in result.shards) and "base_model_relation" not in text  # local parents only


def test_card_push_opens_a_pr_on_someone_elses_repo(hub, family, write_recipe, tmp_path):
    from mergehub import run_merge
    from mergehub.interfaces.cli import main

    hub.add_repo("org/base", {p.name: p for p in family[0].iterdir()})
    hub.add_repo("org/ft", {p.name: p for p in family[1].iterdir()})
    recipe = {
        "merge_method": "linear",
        "models": [{"model": m, "parameters": {"weight": 1}} for m in ("org/base", "org/ft")],
    }
    merged = run_merge(write_recipe(recipe), tmp_path / "out")
    files = {p.name: p for p in merged.out_dir.iterdir() if p.name != "README.md"}
    hub.add_repo("bob/mergekit-made", files)
    assert main(["card", "bob/mergekit-made", "--push"]) == 0
    refs = HfApi().list_repo_commits("bob/mergekit-made", revision="refs/pr/1")
    assert refs and "README.md" in HfApi().list_repo_files("bob/mergekit-made", revision="refs/pr/1")
    assert "README.md" not in HfApi().list_repo_files("bob/mergekit-made")


def test_lineage_command(hub, family, capsys):
    from mergehub.interfaces.cli import main

    hub.add_repo("org/a", {"README.md": b"---\nlicense: mit\n---\n"})
    hub.add_repo("org/b", {"README.md": b"---\nlicense: mit\nbase_model: org/a\nbase_model_relation: finetune\n---\n"})
    assert main(["lineage", "org/b", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert '"org/a"' in out and '"finetune"' in out


def test_a_repush_with_fewer_shards_deletes_the_old_ones_in_the_same_commit(hub, family, write_recipe):
    recipe = write_recipe(_recipe(family))
    first, _ = push_merge(recipe, "alice/reshard", out_shard_bytes=100_000)
    second, pushed = push_merge(recipe, "alice/reshard")  # one 5 GB shard holds it all now
    assert len(first.shards) > 1 and [s.filename for s in second.shards] == ["model-00001-of-00001.safetensors"]
    files = set(HfApi().list_repo_files("alice/reshard"))
    assert {f for f in files if f.endswith(".safetensors")} == {"model-00001-of-00001.safetensors"}
    commits = HfApi().list_repo_commits("alice/reshard")
    assert len(commits) == 3 and commits[0].commit_id == pushed.commit_sha  # creation, first merge, second merge


def test_a_forced_push_into_a_foreign_repo_keeps_its_weights_and_says_so(hub, family, write_recipe, caplog):
    hub.add_repo(
        "alice/theirs",
        {"README.md": b"# not a merge\n", "model.safetensors": (family[0] / "model.safetensors").read_bytes()},
    )
    push_merge(write_recipe(_recipe(family[:2])), "alice/theirs", force=True, out_shard_bytes=100_000)
    assert "model.safetensors" in HfApi().list_repo_files("alice/theirs")
    assert "keeps weight files this merge does not have" in caplog.text and "model.safetensors" in caplog.text
