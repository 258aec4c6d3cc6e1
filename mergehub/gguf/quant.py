"""Which GGML type each tensor gets in a file of a given type, and the encoders that produce its bytes.

The rules follow llama.cpp: `convert_hf_to_gguf.py` for F32, F16, BF16 and Q8_0 files, and `llama-quantize`
(run on an F16 conversion) for Q4_0, Q4_1, Q5_0 and Q5_1. Norms, biases, vectors and router weights stay F32;
a tensor whose rows do not split into blocks falls back to F16. One deliberate difference: where
`llama-quantize` stores the output head (or the tied embedding) as Q6_K, a k-quant the `gguf` package
cannot write, mergehub keeps it at Q8_0, the type llama.cpp itself falls back to.

F32, F16 and BF16 are casts done by torch (bit-identical to gguf-py's); the block types are encoded by gguf-py's
own numpy encoders (measured at 40-75 M weights/s for Q8_0 on this project's 2-core machine; a torch version
was no faster there).
"""

from __future__ import annotations

import math

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QType

from mergehub.gguf.arch import TensorTarget

__all__ = ["QType", "FILE_TYPE_IDS", "tensor_type", "tensor_nbytes", "encode"]

FILE_TYPE_IDS: dict[str, gguf.LlamaFileType] = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
"""`general.file_type` of each file type mergehub writes."""

_ALWAYS_F32 = frozenset({gguf.MODEL_TENSOR.FFN_GATE_INP, gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES})
_LLAMA_QUANTIZE = frozenset({"Q5_1", "Q5_0", "Q4_1", "Q4_0"})


def tensor_type(target: TensorTarget, file_type: str, *, tied_embeddings: bool) -> QType:
    """The GGML type of `target` in a file of `file_type` (see the module docstring for the rules).

    Args:
        tied_embeddings: the model has no output head of its own (llama.cpp then treats the embedding as the head).
    """
    if len(target.shape) <= 1 or target.name.endswith("_norm.weight"):
        return QType.F32
    if target.kind in _ALWAYS_F32 or not target.name.endswith(".weight"):
        return QType.F32
    wanted = QType[file_type]
    if file_type in _LLAMA_QUANTIZE:
        is_head = target.kind == gguf.MODEL_TENSOR.OUTPUT
        if is_head or (tied_embeddings and target.kind == gguf.MODEL_TENSOR.TOKEN_EMBD):
            wanted = QType.Q8_0
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if target.shape[-1] % block == 0 else QType.F16


def tensor_nbytes(shape: tuple[int, ...], qtype: QType) -> int:
    """Bytes of a tensor of `shape` (numpy order) stored as `qtype`."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * (shape[-1] // block) * size


def encode(tensor: torch.Tensor, qtype: QType) -> np.ndarray:
    """The bytes of `tensor` (float32 or float16, on the CPU) stored as `qtype`, as a numpy array to write."""
    if qtype == QType.F32:
        return tensor.to(torch.float32).contiguous().numpy()
    if qtype == QType.F16:
        return tensor.to(torch.float16).contiguous().numpy()
    if qtype == QType.BF16:
        return tensor.to(torch.bfloat16).contiguous().view(torch.uint8).numpy()
    return gguf.quants.quantize(tensor.to(torch.float32).contiguous().numpy(), qtype)
