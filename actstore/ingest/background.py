"""A single background writer thread behind a bounded queue.

The forward loop submits finished chunks; the thread compresses and commits them while the
model computes the next one. The queue depth bounds memory (at most depth + 2 chunk buffers
exist: one filling, `depth` queued, one being written). An exception in the thread is raised
in the submitting thread at its next `submit` or at `close`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class BackgroundWriter:
    """Runs `write(item)` for each submitted item, in order, on one thread (or inline if not threaded)."""

    def __init__(self, write: Callable[[Any], None], depth: int = 1, threaded: bool = True) -> None:
        self._write = write
        self._threaded = threaded
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="actstore-writer", daemon=True)
            self._thread.start()

    def submit(self, item: Any) -> None:
        """Queue an item; blocks while the queue is full; raises the writer's error if it failed."""
        if not self._threaded:
            self._write(item)
            return
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self, abort: bool = False) -> None:
        """Wait for queued items to be written (or drop them if abort) and stop the thread."""
        if self._thread is None:
            return
        if abort:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._thread = None
        if not abort:
            self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._write(item)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self._error = e
                return

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(abort=exc_type is not None)
