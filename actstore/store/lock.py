"""One writer per store: an exclusive lock taken before a store is created, replaced or written.

The lock is `flock` on a sibling file `.<name>.lock` (not on the store directory, which an
overwrite removes and a creation renames into place), taken before the path is inspected, so
two ingests into one path never interleave: the second gets StoreLockedError at once. The file is
removed on release; a process that locked a file someone else had just removed sees that the path
no longer names the file it holds and tries again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from actstore.errors import StoreLockedError, StoreWriteError


def lock_path(store: Path) -> Path:
    store = Path(store).absolute()
    return store.parent / f".{store.name}.lock"


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold the write lock of the store at `store` (its parent directory must exist)."""
    path = lock_path(store)
    fd = _acquire(path, store)
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)  # still holding the lock: no one else can be using the file
        finally:
            os.close(fd)  # releases the lock


def _acquire(path: Path, store: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            verb = "write the store" if store.exists() else "create a store"
            raise StoreWriteError(f"cannot {verb} at {str(store)!r}: its lock file {path.name} cannot be made "
                                  f"({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"another ingest is writing {str(store)!r}; "
                "wait for it to finish or choose another output path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed this file as we opened it: lock the new one


__all__ = ["store_lock", "lock_path"]
