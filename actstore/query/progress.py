"""Optional progress bars for queries that stream a store chunk by chunk.

Query functions stay pure and silent: they walk their chunks through `tracked(...)`, which
reports only to a reporter the caller installed with `progress()` (the CLI does, on a
terminal). Without one, `tracked` is a plain iteration.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

_reporter: ContextVar[Callable[[str, int], Any] | None] = ContextVar("actstore_query_progress", default=None)


@contextmanager
def progress(file: IO[str] | None = None, leave: bool = False) -> Iterator[None]:
    """Within this block, every streamed query draws a bar of its chunks on `file` (stderr)."""

    def make(what: str, total: int) -> Any:
        from tqdm.auto import tqdm  # noqa: PLC0415 (0.2 s to import; only a terminal shows bars)

        return tqdm(total=total, desc=what, unit="chunk", file=file or sys.stderr, leave=leave,
                    mininterval=0.2)

    token = _reporter.set(make)
    try:
        yield
    finally:
        _reporter.reset(token)


def tracked(ranges: Sequence[tuple[int, int]], what: str) -> Iterator[tuple[int, int]]:
    """The (start, stop) chunk ranges, counted on the installed progress bar, if any."""
    make = _reporter.get()
    if make is None or not ranges:
        yield from ranges
        return
    bar = make(what, len(ranges))
    try:
        for r in ranges:
            yield r
            bar.update(1)
    finally:
        bar.close()
