"""Hub sources against the local Hub-compatible server: pinned commits, ranged reads, checked responses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergehub import SourceError, plan_merge, run_merge
from mergehub.demo import make_tiny_llama
from mergehub.recipe import ModelRef
from mergehub.sources.hub import HubSource
from tests.helpers import load_tensors


def _upload(hub, repo_id: str, directory: Path, **kwargs) -> str:
    return hub.add_repo(repo_id, {p.name: p for p in directory.iterdir() if p.is_file()}, **kwargs)


@pytest.fixture
def hub_family(hub, family, sharded_bf16):
    """The tiny family on the server: org/base, org/ft-1, org/ft-2 (sharded bf16)."""
    _upload(hub, "org/base", family[0])
    _upload(hub, "org/ft-1", family[1])
    _upload(hub, "org/ft-2", sharded_bf16)
    hub.reset_stats()
    return hub


def _ta(models: list[str], base: str) -> dict:
    return {
        "merge_method": "task_arithmetic",
        "base_model": base,
        "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(models, [0.6, 0.4])],
        "dtype": "bfloat16",
    }


def test_hub_merge_equals_local_merge_bit_for_bit(hub_family, family, sharded_bf16, write_recipe, tmp_path):
    local = run_merge(
        write_recipe(_ta([str(family[1]), str(sharded_bf16)], str(family[0])), "local.yml"), tmp_path / "local"
    )
    remote = run_merge(write_recipe(_ta(["org/ft-1", "org/ft-2"], "org/base"), "hub.yml"), tmp_path / "hub")
    assert [s.sha256 for s in remote.shards] == [s.sha256 for s in local.shards]
    assert [m.revision for m in remote.plan.models] == [
        hub_family.revision_sha(r) for r in ("org/base", "org/ft-1", "org/ft-2")
    ]


def test_dry_run_reads_only_headers_and_configs(hub_family, write_recipe, monkeypatch):
    from mergehub.sources import hub as hub_module

    monkeypatch.setattr(hub_module, "HEADER_PROBE_BYTES", 1024)  # real headers are ~100 KB; these are ~5 KB
    plan = plan_merge(write_recipe(_ta(["org/ft-1", "org/ft-2"], "org/base")))
    weight_requests = [r for r in hub_family.requests if r.path.endswith(".safetensors")]
    served = sum(n for (_, path), n in hub_family.bytes_served.items() if path.endswith(".safetensors"))
    assert all(r.range for r in weight_requests)
    assert served < 0.1 * plan.read_bytes  # headers only, never weights


def test_layer_range_reads_only_the_bytes_it_needs(hub_family, write_recipe, tmp_path, monkeypatch):
    from mergehub.sources import hub as hub_module

    monkeypatch.setattr(hub_module, "HEADER_PROBE_BYTES", 1024)
    recipe = {"merge_method": "passthrough", "slices": [{"sources": [{"model": "org/base", "layer_range": [1, 2]}]}]}
    result = run_merge(write_recipe(recipe), tmp_path / "out")
    tensors = HubSource(ModelRef("org/base")).tensors()
    header = min(info.start for info in tensors.values())
    served = hub_family.bytes_served[("org/base", "model.safetensors")]
    assert result.plan.read_bytes + header <= served <= result.plan.read_bytes + header + 2 * 64 * 1024
    other_layers = [i for n, i in tensors.items() if ".layers." in n and ".layers.1." not in n]
    weights = "org/base/resolve/" + hub_family.revision_sha("org/base") + "/model.safetensors"
    ranges = [r.range for r in hub_family.requests if r.path.endswith(weights) and r.range]
    assert len(ranges) >= 2  # the header probe, then the layer's tensors
    for text in ranges:
        start, end = (int(x) for x in text.removeprefix("bytes=").split("-"))
        assert not any(start < i.end and i.start <= end for i in other_layers)


def test_pinned_revision_is_used_for_every_read(hub_family, family, write_recipe, tmp_path):
    first = hub_family.revision_sha("org/ft-1")
    source = HubSource(ModelRef("org/ft-1"))
    hub_family.commit_files("org/ft-1", {"config.json": b"{}"}, message="break config")
    assert source.revision == first and source.config()["num_hidden_layers"] == 4
    pinned = HubSource(ModelRef("org/ft-1", first))
    assert pinned.revision == first and torch.equal(
        pinned.read("model.norm.weight"), load_tensors(family[1])["model.norm.weight"]
    )


@pytest.mark.parametrize("kind", ["500", "drop", "429"])
def test_transient_failures_are_retried(hub_family, family, kind):
    hub_family.fail_next("ft-1/resolve", kind)
    tensor = HubSource(ModelRef("org/ft-1")).read("model.layers.0.mlp.up_proj.weight")
    assert torch.equal(tensor, load_tensors(family[1])["model.layers.0.mlp.up_proj.weight"])


def test_one_bad_range_answer_is_retried(hub_family, family):
    source = HubSource(ModelRef("org/ft-1"))
    source.tensors()
    hub_family.fail_next("ft-1/resolve", "bad_content_range")
    assert torch.equal(source.read("model.norm.weight"), load_tensors(family[1])["model.norm.weight"])


@pytest.mark.parametrize("kind", ["ignore_range", "bad_content_range"])
def test_server_that_never_honours_range_is_an_error_not_wrong_weights(hub_family, kind):
    source = HubSource(ModelRef("org/ft-1"))
    source.tensors()
    hub_family.fail_next("ft-1/resolve", kind, times=10)
    with pytest.raises(SourceError, match="does not honour HTTP Range|Content-Range|instead of 206"):
        source.read("model.layers.0.mlp.up_proj.weight")


def test_cache_dir_serves_a_rerun_locally(hub_family, write_recipe, tmp_path):
    recipe = write_recipe(_ta(["org/ft-1", "org/ft-2"], "org/base"))
    run_merge(recipe, tmp_path / "a", cache_dir=tmp_path / "cache")
    hub_family.reset_stats()
    run_merge(recipe, tmp_path / "b", cache_dir=tmp_path / "cache")
    served = sum(n for (_, path), n in hub_family.bytes_served.items() if path.endswith(".safetensors"))
    assert served == 0
    assert load_tensors(tmp_path / "a").keys() == load_tensors(tmp_path / "b").keys()


def test_private_repo_needs_a_token(hub, family, monkeypatch):
    _upload(hub, "bob/secret", family[0], private=True)
    with pytest.raises(SourceError, match="not found, or it is private") as info:
        HubSource(ModelRef("bob/secret"))
    assert "HF_TOKEN" in info.value.hint
    assert HubSource(ModelRef("bob/secret"), token="tok-bob").revision == hub.revision_sha("bob/secret")


def test_gated_repo_says_to_accept_conditions(hub, family):
    _upload(hub, "bob/gated", family[0], gated="manual")
    with pytest.raises(SourceError, match="gated") as info:
        HubSource(ModelRef("bob/gated")).config()
    assert "Accept its conditions" in info.value.hint


def test_missing_repo_and_revision(hub):
    with pytest.raises(SourceError, match="not found"):
        HubSource(ModelRef("org/nothing"))
    hub.add_repo("org/empty", {"README.md": b"hi"})
    with pytest.raises(SourceError, match="revision not found"):
        HubSource(ModelRef("org/empty", "v9"))


def test_pickle_only_repo_is_refused_with_a_way_out(hub, family):
    hub.add_repo("org/old", {"config.json": (family[0] / "config.json").read_bytes(), "pytorch_model.bin": b"\0pickle"})
    with pytest.raises(SourceError, match="no safetensors weights") as info:
        HubSource(ModelRef("org/old")).tensors()
    assert "pickles" in info.value.hint


def test_unreachable_endpoint(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(SourceError, match="cannot reach"):
        HubSource(ModelRef("org/model"), endpoint="http://127.0.0.1:9")


def test_a_shard_smaller_than_the_header_probe_on_a_server_that_gives_no_sizes(hub, family, write_recipe, tmp_path):
    """The probe asks for bytes 0-99999 of an 18 KB shard; the server clamps the range at the end of the file (RFC
    7233)."""
    from mergehub.sources.hub import HEADER_PROBE_BYTES

    hub.sizes_in_info = False
    small = make_tiny_llama(tmp_path / "small", seed=3, base=family[0], shard_size="20KB")
    shards = sorted(small.glob("*.safetensors"))
    assert len(shards) > 1 and all(p.stat().st_size < HEADER_PROBE_BYTES for p in shards)
    _upload(hub, "org/small", small)
    source = HubSource(ModelRef("org/small"))
    assert all(size is None for size in source.file_sizes.values())
    assert set(source.tensors()) == set(load_tensors(small))
    probes = [
        r for r in hub.requests if r.path.endswith(".safetensors") and r.range == f"bytes=0-{HEADER_PROBE_BYTES - 1}"
    ]
    assert len(probes) == len(shards) and {r.status for r in probes} == {206}
    recipe = {"merge_method": "passthrough", "slices": [{"sources": [{"model": "org/small", "layer_range": [0, 4]}]}]}
    result = run_merge(write_recipe(recipe), tmp_path / "out")
    merged = load_tensors(result.out_dir)
    assert all(torch.equal(merged[name], tensor) for name, tensor in load_tensors(small).items())


@pytest.mark.parametrize(
    ("content_range", "length", "problem"),
    [
        ("bytes 0-18551/18552", 18552, ""),  # clamped at the end of the file
        ("bytes 0-18551/18552", 18000, "the body has 18000 bytes, not the 18552"),
        ("bytes 0-18550/18552", 18551, "Content-Range"),  # short, but not at the end of the file
        ("bytes 1-18551/18552", 18551, "Content-Range"),
        ("bytes 0-18551/*", 18552, "Content-Range"),
    ],
)
def test_a_range_clamped_at_the_end_of_the_file_is_accepted_and_nothing_else(content_range, length, problem):
    from mergehub.sources.hub import _range_problem

    found = _range_problem(206, content_range, length, 0, 100_000, may_end_early=True)
    assert (problem in found) if problem else found == ""
    assert _range_problem(206, "bytes 0-18551/18552", 18552, 0, 100_000) != ""  # only where the file may be shorter
