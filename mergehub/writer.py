"""Sharded safetensors output written as tensors arrive, from the shard layout the plan made.

Every output tensor's name, dtype and shape are known before merging starts (`Plan.shards`), so
each shard's header is written first and tensor bytes are appended in order: nothing is
buffered beyond the tensor being written, and each shard's sha256 is computed on the way, on a thread of
its own while the same bytes are written, so hashing adds no time to writing.
The writer knows nothing of merging; `TensorSink` is what the executor writes to (this writer,
GGUF files, or both through `FanOutWriter`).
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import torch

from mergehub.errors import OutputError
from mergehub.plan import ShardLayout, TensorSlot
from mergehub.sources.base import DTYPES, INDEX_NAME
from mergehub.workers import DaemonPool

__all__ = [
    "ShardResult",
    "ShardSink",
    "TensorSink",
    "FanOutWriter",
    "ShardedWriter",
    "StateDictWriter",
    "BoundedWriter",
    "shard_header",
    "tensor_bytes",
    "writing",
]

_ALIGNMENT = 8


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn any OSError raised while writing `path` into an OutputError that says what to do.

    The one place where a failed write (a full disk, a read-only or forbidden directory) becomes a domain error.
    """
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        if e.errno in _FULL:
            hint = "The disk (or your quota) is full: free some space, or write the merge elsewhere."
        elif e.errno in _DENIED:
            hint = "The directory cannot be written: check its permissions, or choose another output directory."
        else:
            hint = "Check the output directory and the disk."
        raise OutputError(f"Cannot write {path}: {e.strerror or e}.", hint=hint) from e


def shard_header(shard: ShardLayout, length: int | None = None) -> bytes:
    """A shard's length prefix and JSON header, padded with spaces to 8 bytes as safetensors does (or to `length`)."""
    entries: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    for slot in shard.slots:
        entries[slot.name] = {"dtype": slot.dtype, "shape": list(slot.shape), "data_offsets": [slot.start, slot.end]}
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * ((length - len(text)) if length is not None else -len(text) % _ALIGNMENT)
    return len(text).to_bytes(8, "little") + text


@dataclass(frozen=True)
class ShardResult:
    """A completed shard: its file name, size and sha256."""

    filename: str
    size: int
    sha256: str


class ShardSink(Protocol):
    """Receives each shard as soon as it is complete (to upload it while the merge goes on)."""

    def shard_done(self, path: Path, result: ShardResult) -> None:
        """Called from the writer's thread with a complete shard file."""
        ...

    def flush(self) -> None:
        """Block until every shard handed over has been dealt with; raise what failed."""
        ...


class TensorSink(Protocol):
    """Receives each output tensor of a merge, in plan order (the safetensors shards, GGUF files)."""

    bytes_written: int

    def write(self, name: str, tensor: torch.Tensor) -> object:
        """Take the next tensor; raise `OutputError` when it is not the one expected."""
        ...


class FanOutWriter:
    """Hands each tensor to several sinks in turn: the merge writes its safetensors and its GGUF files in one pass."""

    def __init__(self, *sinks: TensorSink) -> None:
        self.sinks = sinks

    @property
    def bytes_written(self) -> int:
        """Bytes written by all sinks together."""
        return sum(sink.bytes_written for sink in self.sinks)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the tensor to every sink."""
        for sink in self.sinks:
            sink.write(name, tensor)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


class ShardedWriter:
    """Writes the tensors of a shard layout, in order, into `directory`, handing each finished shard to `sink`."""

    def __init__(self, directory: Path, shards: Sequence[ShardLayout], sink: ShardSink | None = None) -> None:
        self.directory = directory
        self.sink = sink
        self.shards = tuple(shards)
        self._order = [(i, slot) for i, shard in enumerate(self.shards) for slot in shard.slots]
        self._next = 0
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._hasher = DaemonPool(1, "mergehub-hash")
        self.results: list[ShardResult] = []
        self.bytes_written = 0

    def _open(self, index: int) -> None:
        header = shard_header(self.shards[index])
        path = self.directory / self.shards[index].filename
        self._hash = hashlib.sha256()
        with writing(path):
            self._file = open(path, "wb")
            self._emit(header)

    def _emit(self, data: bytes | memoryview) -> None:
        assert self._file is not None
        hashed = self._hasher.submit(self._hash.update, data)  # sha256 releases the GIL, as writing does
        self._file.write(data)
        hashed.result()
        self.bytes_written += len(data)

    def _finish_shard(self, index: int) -> None:
        assert self._file is not None
        file, self._file = self._file, None
        with writing(self.directory / self.shards[index].filename):
            size = file.tell()
            file.close()  # flushes: a full disk may only show here
        self.results.append(ShardResult(self.shards[index].filename, size, self._hash.hexdigest()))
        if self.sink is not None:
            self.sink.shard_done(self.directory / self.shards[index].filename, self.results[-1])

    def write(self, name: str, tensor: torch.Tensor) -> ShardResult | None:
        """Append the next tensor of the layout; returns the shard's result when this completes it.

        Raises:
            OutputError: the tensor is not the next one in the layout, or its dtype or shape differ.
        """
        if self._next >= len(self._order):
            raise OutputError(f"Tensor {name!r} was written after the last tensor of the layout.")
        shard_index, slot = self._order[self._next]
        if name != slot.name or tuple(tensor.shape) != slot.shape or tensor.dtype != DTYPES[slot.dtype]:
            raise OutputError(
                f"Writer expected {slot.name!r} {slot.dtype}{list(slot.shape)}, got {name!r} "
                f"{tensor.dtype}{list(tensor.shape)}."
            )
        if self._file is None:
            self._open(shard_index)
        with writing(self.directory / self.shards[shard_index].filename):
            self._emit(tensor_bytes(tensor.cpu()))
        self._next += 1
        if slot is self.shards[shard_index].slots[-1]:
            self._finish_shard(shard_index)
            return self.results[-1]
        return None

    def write_index(self) -> None:
        """Write `model.safetensors.index.json` once every tensor is written."""
        if self._next != len(self._order):
            missing = [slot.name for _, slot in self._order[self._next :]]
            raise OutputError(f"{len(missing)} tensors were never written, starting with {missing[0]!r}.")
        index = {
            "metadata": {"total_size": sum(shard.data_bytes for shard in self.shards)},
            "weight_map": {slot.name: shard.filename for shard in self.shards for slot in shard.slots},
        }
        with writing(self.directory / INDEX_NAME):
            (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        self._hasher.shutdown()

    def close(self) -> None:
        """Close a shard left open by a failed merge."""
        self._hasher.shutdown(wait=False)
        file, self._file = self._file, None
        _close_after_failure(file)


class StateDictWriter:
    """Collects the output tensors of a shard layout into a state dict in memory, checked as `ShardedWriter` checks
    them."""

    def __init__(self, shards: Sequence[ShardLayout]) -> None:
        self._slots = {slot.name: slot for shard in shards for slot in shard.slots}
        self.tensors: dict[str, torch.Tensor] = {}
        self.bytes_written = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Keep one output tensor (on the CPU).

        Raises:
            OutputError: the tensor is not in the layout, was written twice, or its dtype or shape differ.
        """
        slot = self._slots.get(name)
        if slot is None or name in self.tensors:
            raise OutputError(f"Tensor {name!r} is {'written twice' if slot else 'not in the layout'}.")
        if tuple(tensor.shape) != slot.shape or tensor.dtype != DTYPES[slot.dtype]:
            raise OutputError(
                f"Writer expected {name!r} {slot.dtype}{list(slot.shape)}, got {tensor.dtype}{list(tensor.shape)}."
            )
        self.tensors[name] = tensor.cpu()
        self.bytes_written += slot.end - slot.start

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every output tensor by name, once all are written.

        Raises:
            OutputError: some tensors of the layout were never written.
        """
        missing = [name for name in self._slots if name not in self.tensors]
        if missing:
            raise OutputError(f"{len(missing)} tensors were never written, starting with {missing[0]!r}.")
        return self.tensors


class BoundedWriter:
    """Writes one safetensors file whose tensors' shapes are known in advance only up to a bound (`layout`).

    A tensor may be smaller than its slot in any dimension (an extracted LoRA factor whose rank the data decides).
    The header is reserved at the size the bounds need, the tensors are appended as they arrive, then the header of
    the actual shapes is written in place, padded with spaces as the safetensors format allows: one pass, nothing
    buffered beyond the tensor being written.
    """

    def __init__(self, directory: Path, layout: ShardLayout) -> None:
        self.path = directory / layout.filename
        self.layout = layout
        self._reserved = len(shard_header(layout)) - 8
        self._written: list[TensorSlot] = []
        self._offset = 0
        self.bytes_written = 0
        self.result: ShardResult | None = None
        with writing(self.path):
            self._file: BinaryIO | None = open(self.path, "wb")
            self._file.write(b"\0" * (8 + self._reserved))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor of the layout.

        Raises:
            OutputError: the tensor is not the next one, its dtype differs, or it exceeds its slot's shape.
        """
        slots = self.layout.slots
        if self._file is None or len(self._written) >= len(slots):
            raise OutputError(f"Tensor {name!r} was written after the last tensor of {self.layout.filename}.")
        slot = slots[len(self._written)]
        shape = tuple(tensor.shape)
        fits = len(shape) == len(slot.shape) and all(n <= bound for n, bound in zip(shape, slot.shape))
        if name != slot.name or tensor.dtype != DTYPES[slot.dtype] or not fits:
            raise OutputError(
                f"Writer expected {slot.name!r} {slot.dtype} at most {list(slot.shape)}, "
                f"got {name!r} {tensor.dtype}{list(shape)}."
            )
        data = tensor_bytes(tensor.cpu())
        with writing(self.path):
            self._file.write(data)
        self._written.append(TensorSlot(name, slot.dtype, shape, self._offset, self._offset + len(data)))
        self._offset += len(data)
        self.bytes_written += len(data)

    def finish(self) -> ShardResult:
        """Write the header of the actual shapes once every tensor is written; the file's size and sha256."""
        if self._file is None or len(self._written) != len(self.layout.slots):
            missing = [slot.name for slot in self.layout.slots[len(self._written) :]]
            raise OutputError(f"{len(missing)} tensors were never written, starting with {missing[0]!r}.")
        header = shard_header(ShardLayout(self.layout.filename, tuple(self._written)), self._reserved)
        file, self._file = self._file, None
        with writing(self.path):
            file.seek(0)
            file.write(header)
            file.close()
            digest = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        self.result = ShardResult(self.layout.filename, self.path.stat().st_size, digest.hexdigest())
        return self.result

    def close(self) -> None:
        """Close the file left open by a failed run."""
        file, self._file = self._file, None
        _close_after_failure(file)


def _close_after_failure(file: BinaryIO | None) -> None:
    """Close a file a failed run left open; the run failed already and its staging directory is removed."""
    if file is not None:
        try:
            file.close()
        except OSError:
            pass
