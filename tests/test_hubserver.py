"""The test Hub server, driven by huggingface_hub's real client."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, HfFileSystem, ModelCard, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import save_file

from tests.hubserver import HubServer, hub_client_env, start_hub_server

TOKEN, BOB = "tok-alice", "tok-bob"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    """A running server with users alice (member of org) and bob; the client is alice."""
    tokens = {TOKEN: "alice", BOB: "bob"}
    with (
        start_hub_server(tmp_path / "hub", tokens, {"org": ["alice"]}) as server,
        hub_client_env(server.endpoint, tmp_path / "hf_home", token=TOKEN),
    ):
        yield server


@pytest.fixture
def api(hub: HubServer) -> HfApi:
    return HfApi()


def _safetensors(path: Path, **tensors: torch.Tensor) -> Path:
    save_file(tensors, str(path))
    return path


def test_whoami(api: HfApi, hub: HubServer) -> None:
    me = api.whoami()
    assert me["name"] == "alice" and [o["name"] for o in me["orgs"]] == ["org"]
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(token="wrong").whoami()
    assert e.value.response.status_code == 401


def test_create_delete_repo(api: HfApi) -> None:
    url = api.create_repo("org/new", private=True)
    assert url.repo_id == "org/new"
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo("org/new")
    assert e.value.response.status_code == 409
    assert api.create_repo("org/new", exist_ok=True).repo_id == "org/new"
    info = api.model_info("org/new")
    assert info.private and [s.rfilename for s in info.siblings] == [".gitattributes"]
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("org/new")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo("bob/new")
    assert e.value.response.status_code == 403
    api.delete_repo("org/new")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/new")


def test_upload_history_and_pinned_download(api: HfApi, hub: HubServer, tmp_path: Path) -> None:
    weights = _safetensors(tmp_path / "w.safetensors", w=torch.arange(4096, dtype=torch.float32))
    api.create_repo("alice/m")
    first = api.create_commit(
        "alice/m",
        [CommitOperationAdd("model.safetensors", str(weights)), CommitOperationAdd("config.json", b'{"a": 1}')],
        commit_message="add model",
    )
    assert hub.bytes_received == weights.stat().st_size
    second = api.upload_file(path_or_fileobj=b'{"a": 2}', path_in_repo="config.json", repo_id="alice/m")
    info = api.model_info("alice/m", files_metadata=True)
    assert info.sha == second.oid == hub.revision_sha("alice/m") != first.oid
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["model.safetensors"].lfs.size == weights.stat().st_size
    assert siblings["config.json"].lfs is None and siblings["config.json"].size == 8
    assert all(s.size is None for s in api.model_info("alice/m").siblings)  # sizes only with ?blobs=true
    hub.sizes_in_info = False
    assert all(s.size is None for s in api.model_info("alice/m", files_metadata=True).siblings)
    hub.sizes_in_info = True
    old = hf_hub_download("alice/m", "config.json", revision=first.oid)
    assert Path(old).read_bytes() == b'{"a": 1}'
    assert Path(hf_hub_download("alice/m", "config.json")).read_bytes() == b'{"a": 2}'
    assert Path(hf_hub_download("alice/m", "model.safetensors")).read_bytes() == weights.read_bytes()
    assert [c.commit_id for c in api.list_repo_commits("alice/m")][:2] == [second.oid, first.oid]
    api.create_commit("alice/m", [CommitOperationDelete("config.json")], commit_message="rm")
    assert not api.file_exists("alice/m", "config.json") and api.file_exists(
        "alice/m", "config.json", revision=first.oid
    )


def test_unchanged_lfs_content_is_not_uploaded_again(api: HfApi, hub: HubServer) -> None:
    hub.add_repo("alice/a", {"x.bin": b"\0" * 1000})
    api.create_repo("alice/b")
    api.upload_file(path_or_fileobj=b"\0" * 1000, path_in_repo="y.bin", repo_id="alice/b")
    assert hub.bytes_received == 0
    assert (
        api.model_info("alice/b", files_metadata=True).siblings[1].lfs.sha256
        == api.get_paths_info("alice/a", "x.bin")[0].lfs.sha256
    )


def test_create_pr(api: HfApi, hub: HubServer) -> None:
    hub.add_repo("alice/m", {"a.txt": b"main"})
    commit = api.upload_file(path_or_fileobj=b"pr", path_in_repo="a.txt", repo_id="alice/m", create_pr=True)
    assert commit.pr_revision == "refs/pr/1" and commit.pr_num == 1
    assert Path(hf_hub_download("alice/m", "a.txt", revision="refs/pr/1")).read_bytes() == b"pr"
    assert Path(hf_hub_download("alice/m", "a.txt")).read_bytes() == b"main"
    assert hub.revision_sha("alice/m", "refs/pr/1") == commit.oid


def test_model_card_push_and_load(api: HfApi, hub: HubServer) -> None:
    hub.add_repo("alice/m")
    ModelCard("---\nlicense: mit\ntags:\n- merge\n---\n# Merged\n").push_to_hub("alice/m")
    assert ModelCard.load("alice/m").data.tags == ["merge"]
    info = api.model_info("alice/m")
    assert info.card_data.license == "mit" and info.tags == ["merge"]


def test_ranged_get_and_byte_counting(hub: HubServer) -> None:
    data = bytes(range(256)) * 4
    hub.add_repo("alice/m", {"blob.bin": data})
    url = f"{hub.endpoint}/alice/m/resolve/main/blob.bin"
    r = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert r.headers["X-Repo-Commit"] == hub.revision_sha("alice/m")
    assert httpx2.get(url, headers={"Range": "bytes=-4"}).content == data[-4:]
    clamped = httpx2.get(url, headers={"Range": "bytes=1000-5000"})  # past the end: clamped, as RFC 7233 and the Hub do
    assert clamped.status_code == 206 and clamped.content == data[1000:]
    assert clamped.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert httpx2.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    assert httpx2.head(url).headers["Content-Length"] == str(len(data))
    assert hub.bytes_served["alice/m", "blob.bin"] == 10 + 4 + 24
    assert [(q.method, q.range, q.status) for q in hub.requests][-2:] == [
        ("GET", f"bytes={len(data)}-", 416),
        ("HEAD", None, 200),
    ]


def test_hf_hub_download_counts_exact_bytes(api: HfApi, hub: HubServer) -> None:
    hub.add_repo("alice/m", {"model.safetensors": b"x" * 5000})
    hf_hub_download("alice/m", "model.safetensors")
    assert hub.bytes_served == {("alice/m", "model.safetensors"): 5000}
    assert [q.method for q in hub.requests] == ["HEAD", "GET"]


def test_get_safetensors_metadata(api: HfApi, hub: HubServer, tmp_path: Path) -> None:
    single = _safetensors(tmp_path / "s.safetensors", a=torch.zeros(2, 3), b=torch.zeros(4, dtype=torch.float16))
    hub.add_repo("alice/single", {"model.safetensors": single})
    meta = api.get_safetensors_metadata("alice/single")
    assert not meta.sharded and meta.files_metadata["model.safetensors"].tensors["a"].shape == [2, 3]
    shards = {
        f"model-0000{i}-of-00002.safetensors": _safetensors(tmp_path / f"{i}.st", **{f"t{i}": torch.ones(i)})
        for i in (1, 2)
    }
    index = {"metadata": {"total_size": 12}, "weight_map": {f"t{i}": n for n, i in zip(shards, (1, 2))}}
    hub.add_repo("alice/sharded", {**shards, "model.safetensors.index.json": json.dumps(index).encode()})
    meta = api.get_safetensors_metadata("alice/sharded")
    assert meta.sharded and meta.weight_map == index["weight_map"] and meta.parameter_count == {"F32": 3}


def test_access_errors(hub: HubServer) -> None:
    hub.add_repo("alice/private", {"a.txt": b"a"}, private=True)
    hub.add_repo("alice/gated", {"a.txt": b"a"}, gated=True)
    for token in (False, BOB):
        with pytest.raises(RepositoryNotFoundError) as e:
            hf_hub_download("alice/private", "a.txt", token=token)
        assert not isinstance(e.value, GatedRepoError)
        with pytest.raises(GatedRepoError):
            hf_hub_download("alice/gated", "a.txt", token=token)
    assert HfApi(token=BOB).model_info("alice/gated").gated == "auto"
    hub.grant_access("alice/gated", "bob")
    assert Path(hf_hub_download("alice/gated", "a.txt", token=BOB)).read_bytes() == b"a"
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("alice/private", "missing.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/private", "a.txt", revision="nope")


def test_tree_paths_info_and_filesystem(api: HfApi, hub: HubServer, tmp_path: Path) -> None:
    (tmp_path / "seed" / "sub").mkdir(parents=True)
    (tmp_path / "seed" / "README.md").write_text("# m\n")
    (tmp_path / "seed" / "sub" / "w.safetensors").write_bytes(b"w" * 100)
    first = hub.add_repo("alice/m", tmp_path / "seed")
    hub.commit_files("alice/m", {"sub/extra.txt": b"e"}, message="more")
    assert [e.path for e in api.list_repo_tree("alice/m")] == ["README.md", "sub"]
    tree = {e.path: e for e in api.list_repo_tree("alice/m", recursive=True, expand=True)}
    assert sorted(tree) == ["README.md", "sub", "sub/extra.txt", "sub/w.safetensors"]
    assert tree["sub/w.safetensors"].lfs.size == 100 and tree["sub/w.safetensors"].last_commit.oid == first
    assert tree["sub"].last_commit.title == "more"
    assert [e.path for e in api.get_paths_info("alice/m", ["sub", "README.md", "nope"])] == ["sub", "README.md"]
    fs = HfFileSystem(endpoint=hub.endpoint, skip_instance_cache=True)
    assert sorted(fs.ls("alice/m/sub", detail=False)) == ["alice/m/sub/extra.txt", "alice/m/sub/w.safetensors"]
    with fs.open("alice/m/sub/w.safetensors", "rb", block_size=16) as f:
        f.seek(90)
        assert f.read(5) == b"w" * 5
    with fs.open(f"alice/m@{first}/sub/w.safetensors", "rb") as f:
        assert f.read() == b"w" * 100


@pytest.mark.parametrize("kind, status", [("500", 500), ("429", 429)])
def test_fail_status_once(hub: HubServer, kind: str, status: int) -> None:
    hub.add_repo("alice/m", {"a.txt": b"abc"})
    hub.fail_next("a.txt", kind)
    url = f"{hub.endpoint}/alice/m/resolve/main/a.txt"
    assert httpx2.get(url).status_code == status
    assert httpx2.get(url).content == b"abc"


def test_fail_drop(hub: HubServer) -> None:
    hub.add_repo("alice/m", {"a.bin": b"z" * 10_000})
    hub.fail_next("a.bin", "drop")
    with pytest.raises(httpx2.RemoteProtocolError):
        httpx2.get(f"{hub.endpoint}/alice/m/resolve/main/a.bin")
    assert hub.bytes_served["alice/m", "a.bin"] == 5000


def test_fail_drop_is_resumed_by_client(api: HfApi, hub: HubServer) -> None:
    hub.add_repo("alice/m", {"a.bin": b"z" * 10_000})
    hub.fail_next("a.bin", "drop")
    assert Path(hf_hub_download("alice/m", "a.bin")).read_bytes() == b"z" * 10_000
    # the client buffers 10 MB chunks, so it lost the 5000 bytes and starts over
    assert [q.range for q in hub.requests if q.method == "GET"] == [None, None]
    assert hub.bytes_served["alice/m", "a.bin"] == 15_000


def test_fail_range_kinds(hub: HubServer) -> None:
    hub.add_repo("alice/m", {"a.bin": bytes(range(100))})
    url, rng = f"{hub.endpoint}/alice/m/resolve/main/a.bin", {"Range": "bytes=10-19"}
    hub.fail_next("a.bin", "ignore_range")
    hub.fail_next("a.bin", "bad_content_range")
    assert httpx2.get(url).status_code == 200  # no Range: range faults stay pending
    r = httpx2.get(url, headers=rng)
    assert r.status_code == 200 and r.content == bytes(range(100))
    r = httpx2.get(url, headers=rng)
    assert (
        r.status_code == 206 and r.content == bytes(range(10, 20)) and r.headers["Content-Range"] == "bytes 11-19/100"
    )
    assert httpx2.get(url, headers=rng).headers["Content-Range"] == "bytes 10-19/100"


def test_throttle(hub: HubServer) -> None:
    hub.add_repo("alice/m", {"a.bin": b"t" * 200_000})
    hub.throttle_bps = 1_000_000
    start = time.monotonic()
    assert len(httpx2.get(f"{hub.endpoint}/alice/m/resolve/main/a.bin").content) == 200_000
    assert time.monotonic() - start >= 0.18
