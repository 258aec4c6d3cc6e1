"""Crafted safetensors headers and file names: refused at plan time, as the safetensors library refuses them."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergehub.errors import OutputError, PublishError, SourceError
from mergehub.sources.base import parse_safetensors_header, weight_files
from mergehub.sources.local import LocalSource


def write_raw(path: Path, header: object, data: bytes, *, length: int | None = None) -> Path:
    """A file in safetensors layout with any header and data, valid or not."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


CRAFTED = {
    "overlapping tensors": (
        {"a": _entry("F32", [4], 0, 16), "b": _entry("F32", [4], 0, 16)},
        16,
        "overlaps the tensor before it",
    ),
    "size differs from shape": (
        {"a": _entry("F32", [4], 0, 8)},
        8,
        r"F32\[4\] \(16 bytes\), but its data_offsets span 8",
    ),
    "offsets past the end": ({"a": _entry("F32", [4], 0, 16)}, 8, r"the file has \d+: it is truncated"),
    "a gap between tensors": ({"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)}, 12, "leaves a gap"),
    "bytes after the data": ({"a": _entry("F32", [1], 0, 4)}, 12, "the rest is not described"),
    "end before begin": ({"a": _entry("F32", [0], 0, 0), "b": _entry("U8", [0], 4, 0)}, 4, "leaves a gap|ends before"),
    "shape not a list": ({"a": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}, 16, "malformed shape"),
    "negative offsets": ({"a": _entry("F32", [1], -4, 0)}, 4, "malformed data_offsets"),
    "header not an object": (["a"], 0, "not a JSON object"),
    "metadata not strings": ({"__metadata__": {"n": 1}}, 0, "__metadata__ is not a map of strings"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_headers_are_refused_like_safetensors_refuses_them(tmp_path, case):
    header, data_bytes, pattern = CRAFTED[case]
    path = write_raw(tmp_path / "model.safetensors", header, bytes(data_bytes))
    with pytest.raises(Exception):  # noqa: B017 - the oracle: safetensors refuses the file too, with errors of its own
        with safe_open(path, "pt") as f:
            [f.get_tensor(k) for k in f.keys()]
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SourceError, match=pattern) as info:
        LocalSource(tmp_path).tensors()
    assert str(tmp_path) in info.value.message or "model.safetensors" in info.value.message
    assert info.value.hint


def test_a_valid_file_with_empty_and_one_byte_tensors_is_accepted(tmp_path):
    tensors = {"e": torch.zeros(0), "b": torch.tensor([True, False]), "f": torch.arange(3, dtype=torch.float16)}
    save_file(tensors, tmp_path / "model.safetensors")
    infos = parse_safetensors_header(*_header_and_size(tmp_path / "model.safetensors"))
    assert {n: i.shape for n, i in infos.items()} == {"e": (0,), "b": (2,), "f": (3,)}


def _header_and_size(path: Path) -> tuple[bytes, str, int]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + length], path.name, len(data)


@pytest.mark.parametrize(
    ("header", "length", "pattern"),
    [
        (b"{not json", None, r"corrupt safetensors header: Expecting property name"),
        (b"{}", 10**6, "declares a 1000000-byte header, but the file has"),
    ],
)
def test_header_errors_keep_their_cause_and_message(tmp_path, header, length, pattern):
    write_raw(tmp_path / "model.safetensors", header, b"", length=length)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SourceError, match=pattern) as info:
        LocalSource(tmp_path).tensors()
    assert "None" not in str(info.value)


def test_dry_run_refuses_an_overlapping_file_with_a_message_not_a_traceback(tmp_path, family):
    broken = tmp_path / "broken"
    shutil.copytree(family[1], broken)
    target = broken / "model.safetensors"
    data = target.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    names = sorted(n for n in header if n != "__metadata__")
    header[names[1]]["data_offsets"] = header[names[0]][
        "data_offsets"
    ]  # same shape: the second tensor aliases the first
    header[names[1]]["shape"], header[names[1]]["dtype"] = header[names[0]]["shape"], header[names[0]]["dtype"]
    text = json.dumps(header).encode()
    target.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {family[0]}\n    parameters: {{weight: 1}}\n  - model: "
        f"{broken}\n    parameters: {{weight: 1}}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "mergehub", "merge", "--dry-run", str(recipe)], capture_output=True, text=True
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "error:" in run.stderr and "model.safetensors: tensor" in run.stderr


@pytest.mark.parametrize(
    "name",
    [
        "../../../../../evil/model/resolve/main/model.safetensors",
        "/etc/passwd",
        "a\\b.safetensors",
        "a//b.safetensors",
        "./model.safetensors",
        "model.safetensors/..",
        "",
        "x\n.safetensors",
        7,
    ],
)
def test_names_from_a_server_must_be_plain_paths_inside_the_repo(name):
    from mergehub.sources.base import check_repo_file

    with pytest.raises(SourceError, match="not a plain path inside the repo") as info:
        check_repo_file(name, "org/evil")
    assert "org/evil" in info.value.message
    with pytest.raises(SourceError, match="not a plain path"):
        weight_files([], {"weight_map": {"w": name}}, "org/evil")


def test_plain_names_pass():
    from mergehub.sources.base import check_repo_file

    assert (
        check_repo_file("sub/dir/model-00001-of-00002.safetensors", "x") == "sub/dir/model-00001-of-00002.safetensors"
    )
    assert weight_files([], {"weight_map": {"a": "b.safetensors", "c": "b.safetensors"}}, "x") == ["b.safetensors"]


def test_a_local_index_cannot_point_outside_the_model(tmp_path, family):
    model = tmp_path / "m"
    shutil.copytree(family[0], model)
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": f"../{family[1].name}/model.safetensors"}})
    )
    with pytest.raises(SourceError, match="not a plain path"):
        LocalSource(model).tensors()


@pytest.mark.parametrize("error", [SourceError, OutputError])
def test_oserror_based_errors_keep_their_message_when_wrapped(error):
    try:
        raise error("the real reason", hint="h")
    except OSError as e:
        assert e.strerror == "the real reason" and f"cannot read: {e.strerror}." == "cannot read: the real reason."
    assert not issubclass(PublishError, OSError)
