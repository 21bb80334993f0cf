"""One writer per store: an exclusive lock taken before a store is created, replaced or written.

Local: `flock` on a sibling file `.<name>.lock` (not on the store directory, which an
overwrite removes and a creation renames into place), taken before the path is inspected, so
two ingests into one path never interleave: the second gets StoreLockedError at once. The file is
removed on release; a process that locked a file someone else had just removed sees that the path
no longer names the file it holds and tries again. The kernel drops a dead process's flock, so a
local lock is never stale.

Remote (store/fs.py): a sibling object `.<name>.lock` created by a conditional PUT (S3
`If-None-Match: *`: of two writers, exactly one request succeeds and the other gets 412) and
deleted on release. It names its holder (host, pid, start time). An object store cannot tell
that a holder died, so a writer that was killed leaves its lock behind: the next writer is
refused with a line naming the holder and `actstore unlock URL` (`break_lock`), which the user
runs once sure no writer is alive. A lock is never taken over silently.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from actstore.errors import InvalidParameterError, StoreLockedError, StoreWriteError
from actstore.store.fs import RemotePath, StorePath, store_path


def lock_path(store: StorePath) -> StorePath:
    if isinstance(store, RemotePath):
        return _lock_object(store)
    store = Path(store).absolute()
    return store.parent / f".{store.name}.lock"


@contextlib.contextmanager
def store_lock(store: StorePath) -> Iterator[None]:
    """Hold the write lock of the store at `store` (a local parent directory must exist)."""
    if isinstance(store, RemotePath):
        with _remote_lock(store):
            yield
        return
    store = Path(store)
    path = store.absolute().parent / f".{store.absolute().name}.lock"
    fd = acquire_flock(path, store)
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)  # still holding the lock: no one else can be using the file
        finally:
            os.close(fd)  # releases the lock


def acquire_flock(path: Path, store: Path, shared: bool = False, wait: bool = False, what: str = "") -> int:
    """A descriptor holding `flock` on the lock file `path` of the store at `store` (created if absent):
    exclusive, or shared (shards of one store); at once or, with `wait`, blocking. StoreLockedError
    naming `what` the holder writes ("shard 1/2 of") if another process holds it."""
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    for attempt in range(50):
        try:
            # O_NOFOLLOW: a symlink planted as the lock file would have us create or lock a file elsewhere
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            verb = "write the store" if store.exists() else "create a store"
            odd = {errno.EISDIR: "it is a directory", errno.ELOOP: "it is a symbolic link"}.get(e.errno or 0)
            why = f"{odd}; remove {str(path)!r} if no ingest is running" if odd else e.strerror or str(e)
            raise StoreWriteError(f"cannot {verb} at {str(store)!r}: its lock file {path.name} cannot be made "
                                  f"({why})") from None
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            if shared and attempt < 3:  # a shard releasing its shared lock holds it exclusively for a moment
                time.sleep(0.05)
                continue
            holder = f"another process writes {what} {str(store)!r}" if what else \
                f"another ingest is writing {str(store)!r}"
            raise StoreLockedError(f"{holder}; wait for it to finish or choose another output path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed this file as we opened it: lock the new one
    raise StoreLockedError(f"cannot lock {path.name} beside {str(store)!r}; retry")


@contextlib.contextmanager
def _remote_lock(store: RemotePath) -> Iterator[None]:
    path = _lock_object(store)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())}
    try:
        created = path.create_exclusive((json.dumps(holder, sort_keys=True) + "\n").encode())
    except OSError as e:
        raise StoreWriteError(f"cannot write the store at {store.url!r}: its lock object {path.url} cannot be "
                              f"made ({e})") from None
    if not created:
        raise StoreLockedError(f"another writer holds {store.url!r} ({_describe(path)}); wait for it to finish, or "
                               f"if that writer was killed, run `actstore unlock {store.url}` and retry")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _lock_object(store: RemotePath) -> RemotePath:
    if store.parent.path == store.path:  # no store is written there, so none can have left a lock
        raise InvalidParameterError(f"store URL {store.url!r} is a bucket root; name a prefix inside it "
                                    f"(e.g. {store.url.rstrip('/')}/store): its lock object lives beside it")
    return store.parent / f".{store.name}.lock"


def _describe(path: RemotePath) -> str:
    """Who holds the lock object `path`, from its contents."""
    try:
        raw = path.read_bytes_or_none()
        rec = json.loads(raw or b"{}")
        pid, host, since = (rec.get(k) for k in ("pid", "host", "since"))
    except (OSError, ValueError, AttributeError):
        pid = host = since = None
    if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in (pid, host, since)):
        return f"lock object {path.url}, which does not name its holder"  # not one a writer of ours made
    return f"lock object {path.url}: pid {pid} on {host} since {since}"


def break_lock(store: "str | os.PathLike[str] | RemotePath", storage_options: dict | None = None) -> str | None:
    """Remove the lock object a killed writer left beside the remote store `store`; returns what
    it said of its holder, or None if there was none. Only for a writer known to be dead: the lock
    is what keeps two writers from interleaving. A local store's lock dies with its process, so
    there is nothing to break (InvalidParameterError)."""
    root = store_path(store, "store", storage_options)
    if not isinstance(root, RemotePath):
        raise InvalidParameterError(f"{str(root)!r} is a local store: its lock is released when the writing "
                                    "process exits, so there is nothing to unlock")
    path = _lock_object(root)
    if not path.exists():
        return None
    what = _describe(path)
    path.unlink(missing_ok=True)
    return what


__all__ = ["acquire_flock", "store_lock", "lock_path", "break_lock"]
