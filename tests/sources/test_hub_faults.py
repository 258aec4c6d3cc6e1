"""A hostile or failing Hub: names outside the repo, hangs, stalls, long Retry-After, bytes changed in transit."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from mergehub import Plan, SourceError, plan_merge, run_merge
from mergehub.recipe import ModelRef
from mergehub.sources import hub as hub_module
from mergehub.sources.hub import HubSource
from tests.helpers import load_tensors


def _upload(hub, repo_id: str, directory: Path) -> str:
    return hub.add_repo(repo_id, {p.name: p for p in directory.iterdir() if p.is_file()})


def _linear(models: list[str]) -> dict:
    return {
        "merge_method": "linear",
        "models": [{"model": m, "parameters": {"weight": 1}} for m in models],
        "dtype": "float32",
    }


@pytest.fixture
def quick(monkeypatch):
    """Timeouts of half a second, two attempts, no backoff: faults show in a second or two."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 0.5)
    monkeypatch.setattr(hub_module, "_ATTEMPTS", 2)
    monkeypatch.setattr(hub_module, "_BACKOFF_SECONDS", 0.0)


def within(seconds: float, fn):
    """Run `fn` in a thread; its result or exception, or AssertionError if it is still running after `seconds`."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box["value"], time.monotonic() - started


# -- names from the server ------------------------------------------------------------------------------


def test_index_names_outside_the_repo_are_refused_and_nothing_is_written_outside_the_cache(
    hub, family, write_recipe, tmp_path
):
    _upload(hub, "evil/model", family[1])
    files = {p.name: p for p in family[0].iterdir() if p.is_file()}
    weights = json.dumps(
        {"weight_map": {"model.norm.weight": "../../../../../evil/model/resolve/main/model.safetensors"}}
    )
    hub.add_repo("victim/model", {**files, "model.safetensors.index.json": weights.encode()})
    hub.reset_stats()
    cache = tmp_path / "work" / "cache"
    recipe = write_recipe({"merge_method": "passthrough", "models": [{"model": "victim/model"}]})
    before = set(tmp_path.rglob("*"))
    with pytest.raises(
        SourceError, match=r"victim/model lists the file '\.\./\.\./.*', which is not a plain path inside the repo"
    ) as info:
        run_merge(recipe, tmp_path / "work" / "out", cache_dir=cache)
    assert "hostile" in info.value.hint
    assert not any("evil" in r.path for r in hub.requests)
    written = {p for p in set(tmp_path.rglob("*")) - before if p.is_file()}
    assert all(cache in p.parents for p in written), written


def test_a_backslash_name_in_the_listing_and_a_commit_that_is_not_a_sha_are_refused(hub, family, monkeypatch):
    hub.add_repo(
        "odd/model",
        {
            "config.json": (family[0] / "config.json").read_bytes(),
            "..\\model.safetensors": (family[0] / "model.safetensors").read_bytes(),
        },
    )
    with pytest.raises(SourceError, match="backslash"):
        HubSource(ModelRef("odd/model")).tensors()
    from huggingface_hub import HfApi

    real = HfApi.model_info

    def forged(self, *args, **kwargs):
        info = real(self, *args, **kwargs)
        info.sha = "../../../other"
        return info

    monkeypatch.setattr(HfApi, "model_info", forged)
    with pytest.raises(SourceError, match="not a commit sha"):
        HubSource(ModelRef("odd/model"))


# -- hangs, stalls, Retry-After --------------------------------------------------------------------------


@pytest.fixture
def on_hub(hub, family):
    _upload(hub, "org/base", family[0])
    _upload(hub, "org/ft", family[1])
    hub.reset_stats()
    return hub


def test_a_server_that_never_answers_times_out_with_a_clear_error(on_hub, quick):
    source = HubSource(ModelRef("org/ft"))
    source.tensors()
    on_hub.fail_next("org/ft/resolve", "hang", times=10)
    with pytest.raises(SourceError, match=r"failed 2 times; last: no progress for 0 s while waiting for data") as info:
        within(20, lambda: source.read("model.norm.weight"))
    assert "HF_HUB_DOWNLOAD_TIMEOUT" in info.value.hint


def test_a_metadata_call_that_never_answers_times_out(on_hub, quick):
    on_hub.fail_next("api/models/org/ft", "hang")
    with pytest.raises(SourceError, match="cannot reach"):
        within(20, lambda: HubSource(ModelRef("org/ft")))


def test_a_body_that_stalls_is_retried_then_fails(on_hub, family, quick):
    source = HubSource(ModelRef("org/ft"))
    source.tensors()
    on_hub.fail_next("org/ft/resolve", "stall")
    tensor, _ = within(20, lambda: source.read("model.layers.0.mlp.up_proj.weight"))
    assert torch.equal(tensor, load_tensors(family[1])["model.layers.0.mlp.up_proj.weight"])
    on_hub.fail_next("org/ft/resolve", "stall", times=10)
    with pytest.raises(SourceError, match="no progress for 0 s while waiting for data"):
        within(20, lambda: source.read("model.layers.0.mlp.down_proj.weight"))


def test_a_long_retry_after_is_an_error_at_once_not_a_day_of_sleep(on_hub):
    source = HubSource(ModelRef("org/ft"))
    source.tensors()
    on_hub.fail_next("org/ft/resolve", "429", retry_after=86400)
    with pytest.raises(
        SourceError, match=r"answered 429 and asks to wait 86400 s \(Retry-After\), more than mergehub waits \(300 s\)"
    ) as info:
        _, seconds = within(20, lambda: source.read("model.norm.weight"))
    assert "MERGEHUB_MAX_RETRY_AFTER" in info.value.hint


def test_a_short_retry_after_is_honoured_and_the_cap_is_configurable(on_hub, family, monkeypatch):
    source = HubSource(ModelRef("org/ft"))
    source.tensors()
    on_hub.fail_next("org/ft/resolve", "429", retry_after=1)
    tensor, seconds = within(20, lambda: source.read("model.norm.weight"))
    assert seconds >= 1 and torch.equal(tensor, load_tensors(family[1])["model.norm.weight"])
    monkeypatch.setenv("MERGEHUB_MAX_RETRY_AFTER", "0.5")
    on_hub.fail_next("org/ft/resolve", "429", retry_after=1)
    with pytest.raises(SourceError, match=r"more than mergehub waits \(0 s\)"):
        within(20, lambda: source.read("model.norm.weight"))


# -- bytes changed in transit ----------------------------------------------------------------------------


def test_flipped_bytes_in_a_shard_read_whole_stop_the_merge_before_any_output(on_hub, write_recipe, tmp_path):
    plan = plan_merge(write_recipe(_linear(["org/base", "org/ft"])))
    assert [(f.file, f.verified) for f in plan.input_files] == [("model.safetensors", True)] * 2
    on_hub.fail_next(f"org/ft/resolve/{on_hub.revision_sha('org/ft')}/model.safetensors", "flip", times=10)
    with pytest.raises(
        SourceError,
        match=r"org/ft: model\.safetensors was changed in transit: its bytes hash to [0-9a-f]{64}, but the "
        r"repo lists sha256",
    ):
        run_merge(write_recipe(_linear(["org/base", "org/ft"])), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_a_clean_stream_is_verified_and_the_card_says_so(on_hub, write_recipe, tmp_path):
    result = run_merge(write_recipe(_linear(["org/base", "org/ft"])), tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Hub weight files verified against their sha256 as they streamed: 2 of 2." in card
    assert (
        "verified_inputs:\n  - org/base/model.safetensors\n  - org/ft/model.safetensors\n  unverified_inputs: {}"
        in card
    )
    assert all(f.verified for f in result.plan.input_files)


def test_a_partly_read_shard_is_reported_as_not_verified(on_hub, write_recipe, tmp_path):
    recipe = {"merge_method": "passthrough", "slices": [{"sources": [{"model": "org/ft", "layer_range": [0, 2]}]}]}
    result = run_merge(write_recipe(recipe), tmp_path / "out")
    assert [(f.file, f.verified, f.reason) for f in result.plan.input_files] == [
        ("model.safetensors", False, "read in part")
    ]
    assert "not checked: [0] model.safetensors (read in part)" in result.plan.describe()
    assert Plan.from_json(result.plan.to_json()) == result.plan
    card = (tmp_path / "out" / "README.md").read_text()
    assert (
        "verified against their sha256 as they streamed: 0 of 1." in card
        and "- not verified: `org/ft/model.safetensors` (read in part)" in card
    )


def test_flipped_bytes_in_a_small_file_are_caught(on_hub):
    on_hub.fail_next("org/ft/resolve", "flip")
    with pytest.raises(
        SourceError, match="config.json arrived with content .*, but the repo lists .*: it was changed in transit"
    ):
        HubSource(ModelRef("org/ft")).config()


def test_a_corrupted_stream_does_not_poison_the_cache(on_hub, write_recipe, tmp_path):
    recipe = write_recipe(_linear(["org/base", "org/ft"]))
    on_hub.fail_next(f"org/ft/resolve/{on_hub.revision_sha('org/ft')}/model.safetensors", "flip", times=10)
    with pytest.raises(SourceError, match="changed in transit"):
        run_merge(recipe, tmp_path / "a", cache_dir=tmp_path / "cache")
    on_hub.reset_stats()  # no more faults
    run_merge(recipe, tmp_path / "b", cache_dir=tmp_path / "cache")
    run_merge(recipe, tmp_path / "c", cache_dir=tmp_path / "cache")
    assert load_tensors(tmp_path / "b").keys() == load_tensors(tmp_path / "c").keys()


def test_tensors_read_out_of_file_order_are_hashed_in_file_order():
    import hashlib
    import random

    from mergehub.sources.stream_hash import OrderedHash

    data = bytes(random.Random(0).randrange(256) for _ in range(10_000))
    ranges = [(i, min(i + 700, len(data))) for i in range(0, len(data), 700)]
    random.Random(1).shuffle(ranges)
    hasher = OrderedHash(len(data), memory_bytes=2000)
    for start, end in ranges + ranges[:3]:  # some arrive twice
        hasher.add(start, data[start:end])
    assert hasher.done and hasher.hexdigest() == hashlib.sha256(data).hexdigest() and hasher.spilled_bytes > 0
