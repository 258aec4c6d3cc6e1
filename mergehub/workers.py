"""A thread pool whose threads never keep the process alive: a stuck read cannot delay Ctrl-C or SIGTERM.

`concurrent.futures.ThreadPoolExecutor` joins its threads when the interpreter exits, so one
request stuck in the network holds a stopped merge until its timeouts expire. Here workers are
daemon threads: after `shutdown(wait=False)` the caller cleans up and leaves, and a worker still
blocked is abandoned (it only ever holds bytes in memory). Futures are the standard ones.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["DaemonPool"]

T = TypeVar("T")


class DaemonPool:
    """Run callables on `workers` daemon threads; `submit` returns a `concurrent.futures.Future`."""

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(workers)]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn(*args)`; its future holds the result or the exception."""
        if self._closed:
            raise RuntimeError("submit after shutdown")
        future: Future[T] = Future()
        self._queue.put((future, fn, args))
        return future

    def shutdown(self, *, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop the workers once the queue is done; `cancel_futures` drops what has not started."""
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(e)
            del future, fn, args, item
