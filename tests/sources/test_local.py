"""The local source: pure header parsing and positioned reads equal safetensors' own loading."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergehub.errors import MissingTensorError, SourceError
from mergehub.sources.base import header_length, parse_safetensors_header
from mergehub.sources.local import LocalSource


def test_header_parser_gives_absolute_offsets():
    header = json.dumps(
        {"__metadata__": {"format": "pt"}, "w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}
    ).encode()
    infos = parse_safetensors_header(header, "f.safetensors")
    assert infos["w"].start == 8 + len(header) and infos["w"].nbytes == 12 and infos["w"].torch_dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("data", "pattern"),
    [(b"abc", "too short"), (struct.pack("<Q", 2**40), "not a safetensors file")],
)
def test_header_length_rejects_garbage(data, pattern):
    with pytest.raises(SourceError, match=pattern):
        header_length(data, "x")


def test_corrupt_header_and_unknown_dtype():
    with pytest.raises(SourceError, match="corrupt"):
        parse_safetensors_header(b"{not json", "x")
    with pytest.raises(SourceError, match="unsupported dtype"):
        parse_safetensors_header(b'{"w": {"dtype": "F4", "shape": [1], "data_offsets": [0, 1]}}', "x")


def test_reads_equal_safetensors_load(sharded_bf16):
    source = LocalSource(sharded_bf16)
    expected = {}
    for f in sharded_bf16.glob("*.safetensors"):
        expected.update(load_file(f))
    assert set(source.tensors()) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(source.read(name), tensor)
    with pytest.raises(MissingTensorError, match="no tensor 'nope'"):
        source.read("nope")
    source.close()


def test_truncated_file_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    save_file({"w": torch.ones(1000)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(SourceError, match="truncated|ends before"):
        LocalSource(tmp_path).read("w")
