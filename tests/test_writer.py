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
