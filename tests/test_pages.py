"""Large tensors are advised into transparent huge pages (fewer page faults when a merge fills them)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mergehub import pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _huge_bytes_at(address: int) -> int:
    """The AnonHugePages of the mapping of this process that holds `address`."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(part, 16) for part in head.split("-"))
            inside = low <= address < high
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1]) * 1024
    return 0


def test_small_and_large_tensors_are_ordinary_empty_tensors() -> None:
    small = pages.empty((3, 4), dtype=torch.float32)
    large = pages.empty(pages.MIN_ADVISED_BYTES, dtype=torch.uint8)
    assert small.shape == (3, 4) and small.dtype == torch.float32
    assert large.numel() == pages.MIN_ADVISED_BYTES and large.fill_(7).sum() == 7 * pages.MIN_ADVISED_BYTES


@pytest.mark.skipif(
    sys.platform != "linux" or not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages"
)
def test_a_large_tensor_lies_in_huge_pages_once_filled() -> None:
    tensor = pages.empty(64 * 2**20, dtype=torch.uint8).fill_(1)
    assert _huge_bytes_at(tensor.data_ptr() + 32 * 2**20) >= pages.HUGE_PAGE_BYTES
