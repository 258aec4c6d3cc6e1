"""The streaming sharded writer produces standard safetensors files, an index and checksums."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from mergehub.errors import OutputError
from mergehub.plan import layout_shards
from mergehub.writer import ShardedWriter


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(10, 7, generator=g),
        "b": torch.randn(3, generator=g).bfloat16(),
        "c": torch.randint(0, 9, (4, 2), generator=g),
        "d": torch.randn(100, generator=g).half(),
        "e": torch.tensor(3.5),
    }


def test_layout_respects_shard_size():
    shards = layout_shards([("a", "F32", (10, 10)), ("b", "F32", (10, 10)), ("c", "F32", (30, 30))], 800)
    assert [[s.name for s in shard.slots] for shard in shards] == [["a", "b"], ["c"]]
    assert [shard.filename for shard in shards] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]


def test_written_shards_load_with_safetensors(tmp_path):
    tensors = _tensors()
    from mergehub.sources.base import dtype_code

    shards = layout_shards([(n, dtype_code(t.dtype), tuple(t.shape)) for n, t in tensors.items()], 300)
    writer = ShardedWriter(tmp_path, shards)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    writer.write_index()
    loaded = {}
    for result in writer.results:
        path = tmp_path / result.filename
        assert hashlib.sha256(path.read_bytes()).hexdigest() == result.sha256
        assert path.stat().st_size == result.size
        loaded.update(load_file(path))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)


def test_out_of_order_or_wrong_tensor_is_refused(tmp_path):
    writer = ShardedWriter(tmp_path, layout_shards([("a", "F32", (2,)), ("b", "F32", (2,))], 10**9))
    with pytest.raises(OutputError, match="expected 'a'"):
        writer.write("b", torch.zeros(2))
    with pytest.raises(OutputError, match="expected 'a' F32\\[2\\]"):
        writer.write("a", torch.zeros(3))
    writer.write("a", torch.zeros(2))
    with pytest.raises(OutputError, match="never written"):
        writer.write_index()
    writer.close()


def test_bounded_writer_writes_smaller_tensors_and_a_valid_header(tmp_path):
    from mergehub.writer import BoundedWriter, ShardLayout, TensorSlot

    bounds = (
        TensorSlot("a", "F32", (8, 16), 0, 512),
        TensorSlot("b", "BF16", (16, 8), 512, 768),
        TensorSlot("c", "F32", (3,), 768, 780),
    )
    writer = BoundedWriter(tmp_path, ShardLayout("adapter_model.safetensors", bounds))
    tensors = {"a": torch.randn(3, 16), "b": torch.randn(16, 3).bfloat16(), "c": torch.ones(3)}
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    result = writer.finish()
    loaded = load_file(tmp_path / "adapter_model.safetensors")
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[n], t) for n, t in tensors.items())
    data = (tmp_path / "adapter_model.safetensors").read_bytes()
    assert result.size == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()
    assert (8 + int.from_bytes(data[:8], "little")) % 8 == 0


def test_bounded_writer_refuses_a_tensor_beyond_its_bound(tmp_path):
    from mergehub.writer import BoundedWriter, ShardLayout, TensorSlot

    writer = BoundedWriter(tmp_path, ShardLayout("x.safetensors", (TensorSlot("a", "F32", (2, 2), 0, 16),)))
    with pytest.raises(OutputError, match="at most \\[2, 2\\], got 'a' torch.float32\\[3, 2\\]"):
        writer.write("a", torch.zeros(3, 2))
    with pytest.raises(OutputError, match="never written"):
        writer.finish()
    writer.close()
