"""Router weights from prompts: equal to mergekit-moe's for every gate mode, the base read once, states cached."""

from __future__ import annotations

import pytest
import torch

from mergehub.errors import GateError
from mergehub.moe.gates import GateSource, GateSpec, PromptSet, PromptStateCache, compute_gates, router_name
from mergehub.sources.local import LocalSource

PROMPTS = (
    PromptSet(("w1 w2 w3", "w4 w5"), ("w9",)),
    PromptSet(("w7 w8 w9 w10 w11",)),
    PromptSet(("w20", "w21 w22 w23 w24 w25 w26")),
)


def mergekit_gates(base, prompts, mode: str, seed: int = 0) -> torch.Tensor:
    """mergekit-moe's `get_gate_params` on the same base and prompts, with the tokenizer set up as its `build` does."""
    import transformers
    from mergekit.common import ModelReference
    from mergekit.moe.config import Expert
    from mergekit.moe.router import get_gate_params

    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "left"
    tokenizer.pad_token_id = tokenizer.bos_token_id
    experts = [
        Expert(source_model=str(base), positive_prompts=list(p.positive), negative_prompts=list(p.negative) or None)
        for p in prompts
    ]
    torch.manual_seed(seed)
    return get_gate_params(ModelReference.parse(str(base)), tokenizer, experts, mode=mode, device="cpu")


def spec(mode: str, prompts=PROMPTS, seed: int = 0) -> GateSpec:
    return GateSpec(mode, prompts, routed=len(prompts), num_layers=4, hidden_size=64, vocab_size=256, seed=seed)


@pytest.mark.parametrize("mode", ["hidden", "hidden_avg", "cheap_embed", "random", "uniform_random"])
def test_gates_equal_mergekit_moes(experts, mode):
    base = experts[0]
    ours = compute_gates(spec(mode, seed=3), LocalSource(base), device=torch.device("cpu"))
    theirs = mergekit_gates(base, PROMPTS, mode, seed=3)
    assert ours.shape == theirs.shape == (4, 3, 64)
    assert ours.dtype == theirs.dtype == (torch.bfloat16 if mode.startswith("hidden") else torch.float32)
    assert torch.equal(ours, theirs)
    if mode not in ("random", "uniform_random"):
        assert torch.allclose(ours.float().norm(dim=-1), torch.ones(4, 3), atol=1e-2)


def test_random_gates_follow_the_seed(experts):
    first = compute_gates(spec("random", seed=1), LocalSource(experts[0]), device=torch.device("cpu"))
    assert torch.equal(
        first, compute_gates(spec("random", seed=1), LocalSource(experts[0]), device=torch.device("cpu"))
    )
    assert not torch.equal(
        first, compute_gates(spec("random", seed=2), LocalSource(experts[0]), device=torch.device("cpu"))
    )
    uniform = compute_gates(spec("uniform_random"), LocalSource(experts[0]), device=torch.device("cpu"))
    assert uniform.abs().max() <= 64**-0.5 and uniform.std() > 0.05


class CountingSource(LocalSource):
    """A local model that counts how often each tensor is read."""

    def __init__(self, directory):
        super().__init__(directory)
        self.reads: dict[str, int] = {}

    def read(self, name):
        self.reads[name] = self.reads.get(name, 0) + 1
        return super().read(name)


def test_hidden_mode_reads_each_layer_once_for_all_prompt_lists(experts):
    source = CountingSource(experts[0])
    compute_gates(spec("hidden"), source, device=torch.device("cpu"))
    layer_reads = {name: n for name, n in source.reads.items() if ".layers." in name}
    assert layer_reads and set(layer_reads.values()) == {
        1
    }  # 4 prompt lists (3 positive, 1 negative), one pass over the layers
    assert "lm_head.weight" not in source.reads


def test_prompt_states_are_cached_per_prompt_list(experts, tmp_path, monkeypatch):
    cache = PromptStateCache(tmp_path / "cache")
    first = compute_gates(spec("hidden"), LocalSource(experts[0]), device=torch.device("cpu"), cache=cache)
    assert (cache.hits, cache.misses) == (0, 4)
    changed = (PROMPTS[0], PROMPTS[1], PromptSet(("w30 w31",)))
    source = CountingSource(experts[0])
    again = compute_gates(spec("hidden", changed), source, device=torch.device("cpu"), cache=cache)
    assert (cache.hits, cache.misses) == (3, 5)  # only the changed expert's prompts ran
    assert torch.equal(again[:, :2], first[:, :2])
    import mergehub.moe.forward as forward

    monkeypatch.setattr(forward, "hidden_states", lambda *a, **k: pytest.fail("the forward ran despite the cache"))
    assert torch.equal(
        compute_gates(spec("hidden", changed), LocalSource(experts[0]), device=torch.device("cpu"), cache=cache), again
    )


def test_cache_key_follows_the_base_files(experts, tmp_path):
    import os
    import shutil

    base = shutil.copytree(experts[0], tmp_path / "base")
    cache = PromptStateCache(tmp_path / "cache")
    compute_gates(spec("cheap_embed"), LocalSource(base), device=torch.device("cpu"), cache=cache)
    compute_gates(spec("cheap_embed"), LocalSource(base), device=torch.device("cpu"), cache=cache)
    assert cache.hits == 4
    os.utime(base / "model.safetensors", ns=(1, 1))  # a rewritten file: the cached states no longer apply
    compute_gates(spec("cheap_embed"), LocalSource(base), device=torch.device("cpu"), cache=cache)
    assert cache.hits == 4


def test_a_base_without_tokenizer_is_a_gate_error(family):
    with pytest.raises(GateError, match="no tokenizer files") as info:
        compute_gates(spec("cheap_embed"), LocalSource(family[0]), device=torch.device("cpu"))
    assert "random" in info.value.hint


def test_gate_source_serves_each_layers_rows():
    vectors = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)
    source = GateSource(vectors, routed=2)
    assert source.tensors()[router_name(1)].shape == (2, 2)
    assert torch.equal(source.read(router_name(3, shared=True)), vectors[3, 2:])
    planned = GateSource.planned(spec("random"), torch.bfloat16)
    assert {i.dtype for i in planned.tensors().values()} == {"BF16"} and len(planned.tensors()) == 4
