"""What every tensor source offers, and the pure parser of safetensors headers they share."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from mergehub.errors import SourceError, excerpt

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "DTYPES",
    "INDEX_NAME",
    "MAX_HEADER_BYTES",
    "TensorInfo",
    "TensorSource",
    "MadeHere",
    "check_repo_file",
    "dtype_code",
    "header_length",
    "parse_config",
    "parse_json",
    "weight_files",
    "adapter_weight_files",
    "files_read",
    "parse_safetensors_header",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""The files of a PEFT adapter, as `save_pretrained` writes them."""

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

INDEX_NAME = "model.safetensors.index.json"
"""The index of a sharded safetensors model: which file holds each tensor (read by sources, written by the writer)."""
_CODES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024
_CORRUPT_HINT = "The file is corrupt or is not a safetensors file: download it again, or tell the model's authors."


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


def check_repo_file(name: object, label: str) -> str:
    """`name` if it is a plain relative POSIX path inside a model repo, as every name from a server must be.

    Names come from a repo's listing and its index (`weight_map`) and become URLs and cache paths:
    `..`, a leading `/`, backslashes, empty or `.` segments and control characters are refused, so a
    repo can neither reach outside itself (another repo, another revision, the disk) nor hide a file.

    Raises:
        SourceError: the name is anything else.
    """
    reason = ""
    if not isinstance(name, str) or not name:
        reason = "it is not a non-empty string"
    elif name.startswith("/"):
        reason = "it is absolute"
    elif "\\" in name:
        reason = "it contains a backslash"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        reason = "it contains control characters"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        reason = "it has an empty, `.` or `..` segment"
    if reason:
        raise SourceError(
            f"{label} lists the file {excerpt(name)}, which is not a plain path inside the repo: {reason}.",
            hint="mergehub refuses to follow it. The repo (or the server) is broken or hostile; tell its owner.",
        )
    return name


def parse_json(data: bytes | str, file: str, label: str) -> object:
    """A model file's JSON (config, index), or a SourceError naming the file and the problem."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(
            f"{label}: {file} is not valid JSON: {e}.", hint="The file is corrupt; check the model."
        ) from e


def parse_config(raw: bytes | None, label: str, *, missing_hint: str) -> dict:
    """A model's config.json, parsed: a JSON object, or a SourceError naming the model.

    Raises:
        SourceError: the model has no config.json (`raw` is None), or it is not a JSON object.
    """
    if raw is None:
        raise SourceError(f"{label} has no config.json.", hint=missing_hint)
    config = parse_json(raw, "config.json", label)
    if not isinstance(config, dict):
        raise SourceError(f"{label}: config.json is not a JSON object.", hint="Check the model's config.json.")
    return config


def weight_files(names: list[str], index: object, label: str) -> list[str]:
    """The safetensors files holding a model's weights, from its file names and index.

    Every name is checked with `check_repo_file`.

    Raises:
        SourceError: there are none, a name is not a plain path, or the index is malformed (pickled `.bin`
            weights are refused: they cannot be range-read, and unpickling runs code).
    """
    if index is not None:
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise SourceError(
                f"{label}: {INDEX_NAME} has no `weight_map`.", hint="The index is corrupt; check the model."
            )
        return sorted({check_repo_file(file, label) for file in weight_map.values()})
    if "model.safetensors" in names:
        return ["model.safetensors"]
    files = sorted(n for n in names if n.endswith(".safetensors") and "/" not in n)
    if files:
        return [check_repo_file(file, label) for file in files]
    pickled = any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    hint = (
        "Its weights are pickles, which mergehub does not read. Convert them to safetensors "
        "(`AutoModelForCausalLM.from_pretrained(...).save_pretrained(dir)`), or on the Hub use a revision "
        "that has safetensors (often a conversion PR: `org/name@refs/pr/N`)."
        if pickled
        else "Point the recipe at a model with *.safetensors weights."
    )
    raise SourceError(f"{label} has no safetensors weights.", hint=hint)


def adapter_weight_files(names: list[str], label: str) -> list[str]:
    """The safetensors file holding a PEFT adapter's weights (`adapter_model.safetensors`), from the repo's file names.

    Raises:
        SourceError: it is absent; a pickled `adapter_model.bin` is refused (it cannot be range-read, and unpickling
            runs code).
    """
    if ADAPTER_WEIGHTS in names:
        return [ADAPTER_WEIGHTS]
    if "adapter_model.bin" in names:
        raise SourceError(
            f"{label}: the adapter's weights are a pickle (adapter_model.bin), which mergehub does not read.",
            hint="Convert them to safetensors (`PeftModel.from_pretrained(model, adapter).save_pretrained(dir)` writes "
            "adapter_model.safetensors), or on the Hub use a revision that has it.",
        )
    hint = (
        "A LoRA reference is `model+adapter`, the adapter a PEFT adapter "
        "(adapter_config.json, adapter_model.safetensors)."
    )
    raise SourceError(f"{label} has no {ADAPTER_WEIGHTS}.", hint=hint)


def files_read(tensors: Mapping[str, TensorInfo], names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """For each file that reading `names` touches: how many of its tensors are read, and how many it holds."""
    wanted = set(names)
    counts: dict[str, list[int]] = {}
    for info in tensors.values():
        count = counts.setdefault(info.file, [0, 0])
        count[0] += info.name in wanted
        count[1] += 1
    return {file: (read, total) for file, (read, total) in counts.items() if read}


def header_length(prefix: bytes, file: str, file_size: int | None = None) -> int:
    """The JSON header length stored in a safetensors file's first 8 bytes (checked against the file's size when
    known)."""
    if len(prefix) < 8 or (file_size is not None and file_size < 8):
        raise SourceError(f"{file} is too short to be a safetensors file.", hint="The file may be truncated.")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES:
        raise SourceError(
            f"{file} declares a {length}-byte header; that is not a safetensors file.", hint=_CORRUPT_HINT
        )
    if file_size is not None and 8 + length > file_size:
        raise SourceError(
            f"{file} declares a {length}-byte header, but the file has {file_size} bytes.", hint=_CORRUPT_HINT
        )
    return length


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_entry(name: str, entry: object, file: str) -> tuple[str, tuple[int, ...], int, int]:
    """One header entry's dtype, shape and data offsets, each checked for type."""
    shown = f"{file}: tensor {excerpt(name)}"
    if not isinstance(entry, dict):
        raise SourceError(f"{shown} has no dtype, shape and data_offsets.", hint=_CORRUPT_HINT)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise SourceError(
            f"{shown} has unsupported dtype {excerpt(dtype)}.", hint=f"mergehub reads {', '.join(DTYPES)}."
        )
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise SourceError(f"{shown} has a malformed shape {excerpt(shape)}.", hint=_CORRUPT_HINT)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise SourceError(f"{shown} has malformed data_offsets {excerpt(offsets)}.", hint=_CORRUPT_HINT)
    return dtype, tuple(shape), offsets[0], offsets[1]


def parse_safetensors_header(
    header: bytes, file: str, file_size: int | None = None, *, label: str = ""
) -> dict[str, TensorInfo]:
    """Parse and check a safetensors JSON header (without its 8-byte length) into tensor locations.

    The checks are those the safetensors library makes before it reads a byte of data: every
    tensor's size is `numel * itemsize`, the tensors tile the data section from offset 0 with
    no gap and no overlap, and (when `file_size` is given) the data section ends where the file
    ends. Offsets in the result are absolute positions in the file.

    Raises:
        SourceError: the header is not JSON, or breaks one of those rules; the message names the model
            (`label`), the file and the tensor.
    """
    where = f"{label}: {file}" if label else file
    try:
        entries = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{where} has a corrupt safetensors header: {e}.", hint=_CORRUPT_HINT) from e
    if not isinstance(entries, dict):
        raise SourceError(f"{where} has a safetensors header that is not a JSON object.", hint=_CORRUPT_HINT)
    metadata = entries.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SourceError(f"{where}: the header's __metadata__ is not a map of strings.", hint=_CORRUPT_HINT)
    data_start = 8 + len(header)
    parsed = sorted(
        (
            (begin, end, name, dtype, shape)
            for name, entry in entries.items()
            if name != "__metadata__"
            for dtype, shape, begin, end in [_tensor_entry(name, entry, where)]
        ),
        key=lambda t: (t[0], t[1]),
    )
    infos: dict[str, TensorInfo] = {}
    expected = 0
    for begin, end, name, dtype, shape in parsed:
        shown = f"{where}: tensor {excerpt(name)}"
        if begin != expected or end < begin:
            problem = (
                "overlaps the tensor before it"
                if begin < expected
                else "leaves a gap before it"
                if begin > expected
                else "ends before it begins"
            )
            raise SourceError(f"{shown} has data_offsets [{begin}, {end}], which {problem}.", hint=_CORRUPT_HINT)
        numel = 1
        for dim in shape:
            numel *= dim
        size = numel * DTYPES[dtype].itemsize
        if end - begin != size:
            raise SourceError(
                f"{shown} is {dtype}{list(shape)} ({size} bytes), but its data_offsets span {end - begin} bytes.",
                hint=_CORRUPT_HINT,
            )
        expected = end
        infos[name] = TensorInfo(
            name=name, dtype=dtype, shape=shape, file=file, start=data_start + begin, end=data_start + end
        )
    if file_size is not None and data_start + expected != file_size:
        state = "it is truncated" if file_size < data_start + expected else "the rest is not described by the header"
        raise SourceError(
            f"{where}: the header describes {data_start + expected} bytes, but the file has {file_size}: {state}.",
            hint=_CORRUPT_HINT,
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

    checksums: Mapping[str, str]
    """The sha256 of each weight file that can be verified as it streams (empty for a local directory)."""

    def files_read(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        """The weight files (keys as in `checksums`) that reading these tensors touches: (tensors read, held)."""
        ...

    def verify(self, files: Iterable[str]) -> None:
        """Hash these files (keys of `checksums`, each read whole by the merge) as they stream; a mismatch raises
        SourceError."""
        ...

    def verified_files(self) -> list[str]:
        """The files hashed whole so far, each equal to its checksum."""
        ...

    def close(self) -> None:
        """Release open files or connections."""
        ...


class MadeHere:
    """For tensor sources made in this process (computed routers, a stage's planned output): not pinned to a
    commit, not gated, nothing that travels and could be verified, nothing to release; `read_many` calls the
    subclass's `read` for each name."""

    revision = None
    gated = False
    checksums: Mapping[str, str] = {}

    def read_many(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several tensors, each read in turn."""
        return {name: self.read(name) for name in names}

    def files_read(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        """Bytes used of each weight file by `names`, from the tensors' layout (the files are this process's)."""
        return files_read(self.tensors(), names)

    def verify(self, files: Iterable[str]) -> None:
        """Nothing travels: nothing to verify."""

    def verified_files(self) -> list[str]:
        """None."""
        return []

    def close(self) -> None:
        """Nothing to release."""
