"""Tensors from a model directory on disk, read with positioned reads (no mmap, no whole-file load)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from mergehub import pages
from mergehub.errors import MissingTensorError, SourceError
from mergehub.sources.base import (
    INDEX_NAME,
    TensorInfo,
    adapter_weight_files,
    files_read,
    header_length,
    parse_config,
    parse_json,
    parse_safetensors_header,
    weight_files,
)

__all__ = ["LocalSource"]


class LocalSource:
    """A model directory holding `config.json` and safetensors weights (with `adapter`: a PEFT adapter's directory)."""

    def __init__(self, directory: str | Path, label: str | None = None, *, adapter: bool = False) -> None:
        self.directory = Path(directory)
        self.label = label or str(directory)
        self.adapter = adapter
        self.revision: str | None = None
        self.gated = False
        self._tensors: dict[str, TensorInfo] | None = None
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self.checksums: dict[str, str] = {}  # nothing travels: no transfer to verify

    def _files(self) -> list[str]:
        label = f"{self.label} ({self.directory})"
        names = [p.name for p in self.directory.iterdir() if p.is_file()]
        if self.adapter:
            return adapter_weight_files(names, label)
        index = self.read_file(INDEX_NAME)
        return weight_files(names, parse_json(index, INDEX_NAME, label) if index is not None else None, label)

    def tensors(self) -> Mapping[str, TensorInfo]:
        """Every tensor of the model, parsed from the shard headers and checked against the files' sizes."""
        if self._tensors is None:
            tensors: dict[str, TensorInfo] = {}
            for file in self._files():
                path = self.directory / file
                try:
                    with open(path, "rb") as f:
                        size = os.fstat(f.fileno()).st_size
                        length = header_length(f.read(8), str(path), size)
                        tensors.update(parse_safetensors_header(f.read(length), file, size, label=self.label))
                except SourceError:
                    raise
                except OSError as e:
                    raise SourceError(
                        f"{self.label}: cannot read {path}: {e.strerror or e}.", hint="Check the model directory."
                    ) from e
            self._tensors = tensors
        return self._tensors

    def config(self) -> dict:
        """The model's config.json."""
        return parse_config(
            self.read_file("config.json"), self.label, missing_hint="A model directory needs its config.json."
        )

    def read_file(self, filename: str) -> bytes | None:
        """A small file from the model directory, or None when absent."""
        path = self.directory / filename
        return path.read_bytes() if path.is_file() else None

    def _fd(self, file: str) -> int:
        with self._lock:
            if file not in self._fds:
                self._fds[file] = os.open(self.directory / file, os.O_RDONLY)
            return self._fds[file]

    def read(self, name: str) -> torch.Tensor:
        """Read one tensor with a single positioned read."""
        info = self.tensors().get(name)
        if info is None:
            raise MissingTensorError(f"{self.label} has no tensor {name!r}.")
        buffer = pages.empty(info.nbytes, dtype=torch.uint8)  # not zero-filled, unlike bytearray
        view = memoryview(buffer.numpy())
        fd, done = self._fd(info.file), 0
        while done < info.nbytes:
            count = os.preadv(fd, [view[done:]], info.start + done)
            if count == 0:
                raise SourceError(
                    f"{self.label}: {info.file} ends before tensor {name!r}.", hint="The file is truncated."
                )
            done += count
        return buffer.view(info.torch_dtype).reshape(info.shape)

    def read_many(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several tensors, each with its own positioned read."""
        return {name: self.read(name) for name in names}

    def files_read(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        """The shards that reading these tensors touches: (tensors read, tensors held) for each."""
        return files_read(self.tensors(), names)

    def verify(self, files: Iterable[str]) -> None:
        """Nothing to verify: local files do not travel (`checksums` is empty)."""

    def verified_files(self) -> list[str]:
        """None: local files are read as they are."""
        return []

    def close(self) -> None:
        """Close the open shard files."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
