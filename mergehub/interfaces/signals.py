"""SIGTERM handled like Ctrl-C, so that CI runners, containers and Spaces stopping a merge get the same cleanup.

Both raise an exception in the main thread (`KeyboardInterrupt`, or `Terminated` for SIGTERM), so
every `finally` runs: the staging directory, the push's temporary directory and a repo the push
had just created are removed. The executor does not wait for reads stuck in the network.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Terminated", "stop_on_signals", "exit_code"]


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""

    signum = signal.SIGTERM


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (SIGINT already raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + int(getattr(interrupt, "signum", signal.SIGINT))
