"""What every tensor source offers, and the pure parser of safetensors headers they share."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from mergehub.errors import SourceError

__all__ = [
    "DTYPES",
    "MAX_HEADER_BYTES",
    "TensorInfo",
    "TensorSource",
    "dtype_code",
    "header_length",
    "weight_files",
    "parse_safetensors_header",
]

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
"""safetensors dtype codes and the torch dtypes they map to: the one dtype table."""

_CODES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype."""
    return _CODES[dtype]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies: its file, byte range in that file, dtype code and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.start

    @property
    def torch_dtype(self) -> torch.dtype:
        """The tensor's torch dtype."""
        return DTYPES[self.dtype]


def weight_files(names: list[str], index: dict | None, label: str) -> list[str]:
    """The safetensors files holding a model's weights, from its file names and index.

    Raises:
        SourceError: there are none (pickled `.bin` weights are refused: they cannot be range-read,
            and unpickling runs code).
    """
    if index is not None:
        return sorted(set(index.get("weight_map", {}).values()))
    if "model.safetensors" in names:
        return ["model.safetensors"]
    files = sorted(n for n in names if n.endswith(".safetensors") and "/" not in n)
    if files:
        return files
    pickled = any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    hint = (
        "Its weights are pickles, which mergehub does not read. Convert them to safetensors "
        "(`AutoModelForCausalLM.from_pretrained(...).save_pretrained(dir)`), or on the Hub use a revision "
        "that has safetensors (often a conversion PR: `org/name@refs/pr/N`)."
        if pickled
        else "Point the recipe at a model with *.safetensors weights."
    )
    raise SourceError(f"{label} has no safetensors weights.", hint=hint)


def header_length(prefix: bytes, file: str) -> int:
    """The JSON header length stored in a safetensors file's first 8 bytes."""
    if len(prefix) < 8:
        raise SourceError(f"{file} is too short to be a safetensors file.", hint="The file may be truncated.")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES:
        raise SourceError(f"{file} declares a {length}-byte header; that is not a safetensors file.")
    return length


def parse_safetensors_header(header: bytes, file: str) -> dict[str, TensorInfo]:
    """Parse a safetensors JSON header (without its 8-byte length) into tensor locations.

    Offsets in the result are absolute positions in the file.
    """
    try:
        entries = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{file} has a corrupt safetensors header: {e}.") from e
    data_start = 8 + len(header)
    infos: dict[str, TensorInfo] = {}
    for name, entry in entries.items():
        if name == "__metadata__":
            continue
        if entry.get("dtype") not in DTYPES:
            raise SourceError(f"{file}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}.")
        begin, end = entry["data_offsets"]
        infos[name] = TensorInfo(
            name=name,
            dtype=entry["dtype"],
            shape=tuple(entry["shape"]),
            file=file,
            start=data_start + begin,
            end=data_start + end,
        )
    return infos


class TensorSource(Protocol):
    """A model whose tensors can be listed from headers and read one at a time."""

    label: str
    """How the model is named in messages (its reference)."""

    revision: str | None
    """The commit every read is pinned to (None for a local directory)."""

    gated: bool
    """Whether the model's repo is gated (its users accepted conditions to read it)."""

    def tensors(self) -> Mapping[str, TensorInfo]:
        """Every tensor of the model, from the safetensors headers only."""
        ...

    def config(self) -> dict:
        """The model's `config.json`."""
        ...

    def read_file(self, filename: str) -> bytes | None:
        """A small file of the model repo (tokenizer, generation config), or None when absent."""
        ...

    def read(self, name: str) -> torch.Tensor:
        """One tensor's data, on the CPU, in its stored dtype."""
        ...

    def read_many(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several tensors at once, so that a remote source can fetch neighbours together."""
        ...

    def close(self) -> None:
        """Release open files or connections."""
        ...
