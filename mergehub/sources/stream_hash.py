"""The sha256 of a file whose byte ranges arrive out of order, computed as they arrive (no second read).

A merge reads tensors in the order it merges them, which is rarely the order of the file
(safetensors sorts tensors by name, so `layers.10` comes before `layers.2`). Bytes that
continue the file are hashed at once; ranges that arrive early wait for the bytes before
them: in memory up to a budget, then in an unlinked temporary file, so memory stays bounded
whatever the order.
"""

from __future__ import annotations

import hashlib
import heapq
import tempfile
import threading
from typing import BinaryIO

__all__ = ["OrderedHash", "DEFAULT_MEMORY_BYTES"]

DEFAULT_MEMORY_BYTES = 64 * 1024**2


class OrderedHash:
    """sha256 of `size` bytes fed as `(offset, data)` ranges in any order; ranges may repeat or overlap."""

    def __init__(self, size: int, *, memory_bytes: int = DEFAULT_MEMORY_BYTES, spill_dir: str | None = None) -> None:
        self.size = size
        self.offset = 0
        self._hash = hashlib.sha256()
        self._pending: list[tuple[int, int, int, bytes | int]] = []  # (start, end, sequence, data or spill position)
        self._sequence = 0
        self._memory = 0
        self._memory_bytes = memory_bytes
        self._spill: BinaryIO | None = None
        self._spill_dir = spill_dir
        self._lock = threading.Lock()
        self.spilled_bytes = 0

    @property
    def done(self) -> bool:
        """Whether every byte has been hashed."""
        return self.offset >= self.size

    def hexdigest(self) -> str:
        """The sha256 of the bytes hashed so far (of the whole file once `done`)."""
        return self._hash.hexdigest()

    def add(self, start: int, data: bytes | memoryview) -> bool:
        """Feed bytes `[start, start + len(data))`; returns whether the file is now complete."""
        end = start + len(data)
        with self._lock:
            if end <= self.offset or self.done:
                return self.done
            if start <= self.offset:
                self._consume(start, data)
                self._drain()
            else:
                self._park(start, end, data)
            return self.done

    def close(self) -> None:
        """Release the spill file, if any."""
        with self._lock:
            if self._spill is not None:
                self._spill.close()
                self._spill = None
            self._pending.clear()
            self._memory = 0

    def _consume(self, start: int, data: bytes | memoryview) -> None:
        tail = memoryview(data)[self.offset - start :]
        self._hash.update(tail[: max(0, self.size - self.offset)])
        self.offset = start + len(data)

    def _park(self, start: int, end: int, data: bytes | memoryview) -> None:
        self._sequence += 1
        if self._memory + len(data) <= self._memory_bytes:
            self._memory += len(data)
            heapq.heappush(self._pending, (start, end, self._sequence, bytes(data)))
            return
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix="mergehub-hash-", dir=self._spill_dir)
        position = self._spill.seek(0, 2)
        self._spill.write(data)
        self.spilled_bytes += len(data)
        heapq.heappush(self._pending, (start, end, self._sequence, position))

    def _drain(self) -> None:
        while self._pending and self._pending[0][0] <= self.offset:
            start, end, _, stored = heapq.heappop(self._pending)
            if isinstance(stored, bytes):
                self._memory -= len(stored)
                data = stored
            else:
                assert self._spill is not None
                self._spill.seek(stored)
                data = self._spill.read(end - start)
            if end > self.offset:
                self._consume(start, data)
