"""GGUF files written as the model's tensors are produced: layout first, then data tensor by tensor.

`plan_gguf` works from config.json, the tensors' names and shapes and the tokenizer files, so every
tensor's GGUF name, type and offset is known before any weight is read. `GGUFSink` then receives
the Hugging Face tensors in order (from the merge's executor, or from a model being converted),
turns each into its llama.cpp form and appends it to every file: one pass, memory bounded by a tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from mergehub.errors import OutputError
from mergehub.gguf.arch import ModelMap, TensorTarget, map_model, prepare_tensor
from mergehub.gguf.metadata import Metadata, ModelInfo, model_metadata
from mergehub.gguf.quant import FILE_TYPE_IDS, QType, encode, tensor_nbytes, tensor_type
from mergehub.gguf.tokenizer import GGUFVocab, build_vocab
from mergehub.gguf.types import parse_types
from mergehub.units import format_size

__all__ = ["GGUFFilePlan", "GGUFPlan", "GGUFFile", "GGUFSink", "plan_gguf"]


@dataclass(frozen=True)
class GGUFFilePlan:
    """One GGUF file: its name, file type, metadata, and each tensor's GGML type (in write order)."""

    filename: str
    file_type: str
    metadata: Metadata
    tensor_types: tuple[QType, ...]

    def size(self, model: ModelMap) -> int:
        """Bytes of tensor data in the file."""
        return sum(tensor_nbytes(t.shape, q) for t, q in zip(model.targets, self.tensor_types))


@dataclass(frozen=True)
class GGUFPlan:
    """Everything the GGUF export will write, known before any weight is read."""

    model: ModelMap
    vocab: GGUFVocab
    info: ModelInfo
    files: tuple[GGUFFilePlan, ...]

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the export ignores or cannot match."""
        notes = list(self.vocab.warnings)
        if self.model.skipped:
            notes.append(f"Not in the GGUF files (llama.cpp does not use them): {', '.join(self.model.skipped)}.")
        return tuple(notes)

    def describe(self) -> str:
        """One line per file: name, architecture, types used, size."""
        lines = []
        for file in self.files:
            counts: dict[str, int] = {}
            for qtype in file.tensor_types:
                counts[qtype.name] = counts.get(qtype.name, 0) + 1
            mix = ", ".join(f"{n} {name}" for name, n in counts.items())
            lines.append(
                f"{file.filename}: {self.model.family.arch.name.lower()}, {mix} tensors, "
                f"{format_size(file.size(self.model))}"
            )
        return "\n".join(lines)


def plan_gguf(
    config: Mapping[str, Any],
    tensors: Sequence[tuple[str, tuple[int, ...]]],
    files: Mapping[str, bytes],
    *,
    name: str,
    types: Sequence[str] | str,
    info: ModelInfo | None = None,
) -> GGUFPlan:
    """Lay out the GGUF files of a model from its config, tensor names and shapes, and tokenizer files.

    Args:
        tensors: `(name, shape)` in the order the tensors will be produced.
        files: the model's tokenizer files (and chat_template.jinja, config.json), by file name.
        name: the model's name, for `general.name` and the file names (`{name}-{TYPE}.gguf`).

    Raises:
        GGUFError: an unsupported architecture or type, an unmappable tensor, or an unreadable tokenizer.
    """
    file_types = parse_types(types)
    model = map_model(config, [(n, tuple(s)) for n, s in tensors])
    vocab = build_vocab(model.family, files, model.hparams)
    if model.family.trim_vocab:
        model = map_model(config, [(n, tuple(s)) for n, s in tensors], tokenizer_size=vocab.size)
    info = info or ModelInfo(name=name)
    tied = not any(t.kind == gguf.MODEL_TENSOR.OUTPUT for t in model.targets)
    plans = tuple(
        GGUFFilePlan(
            f"{name}-{file_type}.gguf",
            file_type,
            model_metadata(model, info, FILE_TYPE_IDS[file_type]),
            tuple(tensor_type(t, file_type, tied_embeddings=tied) for t in model.targets),
        )
        for file_type in file_types
    )
    return GGUFPlan(model, vocab, info, plans)


@dataclass(frozen=True)
class GGUFFile:
    """A written GGUF file: its name, file type, size and sha256."""

    filename: str
    file_type: str
    size: int
    sha256: str


class _OpenFile:
    """One GGUF file being written through gguf-py's writer: header, metadata and tensor infos, then data in order."""

    def __init__(self, path: Path, plan: GGUFPlan, file: GGUFFilePlan) -> None:
        self.path = path
        self.file = file
        self.writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[plan.model.family.arch])
        file.metadata.apply(self.writer)
        plan.vocab.apply(self.writer)
        for target, qtype in zip(plan.model.targets, file.tensor_types):
            self.writer.add_tensor_info(
                target.name, target.shape, np.dtype(np.float32), tensor_nbytes(target.shape, qtype), raw_dtype=qtype
            )
        self.writer.write_header_to_file()
        self.writer.write_kv_data_to_file()
        self.writer.write_ti_data_to_file()

    def write(self, array: np.ndarray) -> None:
        self.writer.write_tensor_data(array)

    def finish(self) -> GGUFFile:
        self.writer.close()
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        return GGUFFile(self.path.name, self.file.file_type, self.path.stat().st_size, digest.hexdigest())


class GGUFSink:
    """A tensor sink writing every file of a `GGUFPlan` into `directory` as the model's tensors arrive, in order.

    Tensors the plan skips are ignored; computed tensors (rope factors) are written first, on opening.
    """

    def __init__(self, plan: GGUFPlan, directory: Path) -> None:
        self.plan = plan
        self.directory = directory
        self.bytes_written = 0
        self._skipped = set(plan.model.skipped)
        self._order = list(plan.model.targets)
        self._next = 0
        try:
            self._files = [_OpenFile(directory / f.filename, plan, f) for f in plan.files]
        except OSError as e:
            raise OutputError(
                f"Cannot write GGUF files in {directory}: {e.strerror}.", hint="Check the path and free disk space."
            ) from e
        while self._next < len(self._order) and self._order[self._next].source is None:
            self._emit(self._order[self._next], prepare_tensor(self._order[self._next]))

    def _emit(self, target: TensorTarget, tensor: torch.Tensor) -> None:
        if tuple(tensor.shape) != target.shape:
            raise OutputError(
                f"GGUF tensor {target.name!r} has shape {list(tensor.shape)}, the layout says {list(target.shape)}."
            )
        for file in self._files:
            array = encode(tensor, file.file.tensor_types[self._next])
            try:
                file.write(array)
            except OSError as e:
                raise OutputError(f"Cannot write {file.path.name}: {e.strerror}.", hint="Check free disk space.") from e
            self.bytes_written += array.nbytes
        self._next += 1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Convert and append the next tensor of the model (by its Hugging Face name).

        Raises:
            OutputError: the tensor is not the next one the layout expects.
        """
        if name in self._skipped:
            return
        target = self._order[self._next] if self._next < len(self._order) else None
        if target is None or target.source != name:
            expected = target.source if target else "no more tensors"
            raise OutputError(f"The GGUF writer expected {expected!r}, got {name!r}.")
        self._emit(target, prepare_tensor(target, tensor.cpu()))

    def finish(self) -> tuple[GGUFFile, ...]:
        """Close every file once all tensors are written; their sizes and sha256.

        Raises:
            OutputError: some tensors were never written.
        """
        if self._next != len(self._order):
            raise OutputError(
                f"{len(self._order) - self._next} GGUF tensors were never written, starting with "
                f"{self._order[self._next].name!r}."
            )
        return tuple(file.finish() for file in self._files)

    def close(self) -> None:
        """Close files left open by a failed run."""
        for file in self._files:
            file.writer.close()
