"""Large tensors in transparent huge pages: a merge fills each read or merged tensor once, page by page.

The first touch of every 4 KiB page of a fresh buffer is a page fault, and a merge of 1.1B models
touches some 10 GB. Linux backs memory advised with `MADV_HUGEPAGE` by 2 MiB pages where it has
them (its default policy, `madvise`): 512 times fewer faults and TLB misses. Measured on a 2-core
VM, allocating, filling and sampling a 23 MB bfloat16 tensor took 21 ms in 4 KiB pages and 10 ms
in huge pages. Elsewhere (another OS, huge pages off) the advice is skipped or ignored.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable, Sequence

import torch

__all__ = ["empty"]

HUGE_PAGE_BYTES = 2 * 2**20
MIN_ADVISED_BYTES = 4 * 2**20
"""Smaller tensors would hold no whole huge page, or little of one."""
_MADV_HUGEPAGE = 14


def empty(
    shape: int | Sequence[int] | torch.Size, *, dtype: torch.dtype, device: torch.device | None = None
) -> torch.Tensor:
    """`torch.empty`, advised into huge pages before anything touches it when it is large and in CPU memory."""
    tensor = torch.empty(shape, dtype=dtype, device=device)
    nbytes = tensor.numel() * tensor.element_size()
    if tensor.device.type == "cpu" and nbytes >= MIN_ADVISED_BYTES and (advise := _madvise()) is not None:
        start = -(-tensor.data_ptr() // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
        end = (tensor.data_ptr() + nbytes) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
        if end > start:
            advise(start, end - start, _MADV_HUGEPAGE)  # refused (huge pages off): nothing changes
    return tensor


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's `madvise`, on Linux with glibc; else None."""
    if sys.platform != "linux":
        return None
    try:
        function = ctypes.CDLL("libc.so.6", use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function
