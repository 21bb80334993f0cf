"""A content-addressed cache of the weight arrays of params/, hard-linked into each new store.

Writing params/ (compressing, writing, fsyncing and hashing ~650 MB of float32 for a
GPT-2-small shape) was most of an ingest's fixed setup, yet those bytes depend only on the
weights, the codec and the zarr version. So they are written once per such key into an entry
of the cache and hard-linked into every new store's params/: the store stays self-contained
(a copy of its directory holds its weights; deleting the cache loses nothing), and the store
record takes each chunk's [size, sha256, crc32c tail] from the entry's record instead of
re-reading the files. Where a link fails (another filesystem) the file is copied.

Where: the directory in ACTSTORE_WEIGHT_CACHE ('off' disables the cache), else
$XDG_CACHE_HOME/actstore/weights (~/.cache/actstore/weights). Stores on another filesystem get
copies (still no compressing or hashing). A hard link shares the file: writing into a store's
params/ file in place changes it in every store linking it; every read checks it, so that is
an error naming the file, never a wrong weight.

Never trusted blindly. What is checked, when (every ingest that places params/ from an entry):
- the record is read; the entry and its params/ must be real directories, and the files under it
  (one lstat each) exactly the recorded ones, every one a regular file (no symlink, FIFO, ...);
- each file's (inode, size, mtime, ctime) is compared with the record's `stat` and with what this
  process last found checked (_CHECKED); a file equal to either is used as recorded (any write
  to it, through any link, changes its ctime);
- any other file is read again: a weight chunk whose inode, size and mtime match and only its
  ctime moved (linking or deleting any store's link changes the shared inode's ctime and nothing
  else) has its crc32c computed over its bytes and compared with the recorded tail (the check
  every read makes, and what ties a chunk to its record on the read path: integrity.py); any
  other change (or a file without a crc32c tail, as each zarr.json) is hashed again with sha256
  and compared with the recorded digest. A file whose bytes differ has the entry removed and
  rebuilt from the model.
Each file is read once per ingest (again only if written meanwhile): ingest starts the check on its weights-digest
thread (check_ahead) while it makes and probes the first batch, and the store's creation (place_params; for a new
local store on its own thread while the first chunk's forward runs, actstore.ingest.creation) joins that check where
it is still running (both threads read files), then only compares each file's stat again. Either way it has
finished, and passed, before the store is renamed into place, so before any chunk is written or committed. The
digests of the linked files (chunks and zarr.json documents) go into the new store's record unread
(integrity.write_store_record). An entry that no store links any more is removed by the next ingest of other weights
into the same cache, as is what a killed ingest left building or removing an entry.

```
CACHE/<key>/record.json        {"key", "files": {path: [size, sha256, crc32c tail]}, "stat": {path: [...]}}
CACHE/<key>/params/<name>/...  zarr.json and chunk of each weight, as params/<name>/ of a store
```
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec
from zarr.storage import LocalStore

from actstore.errors import StoreCorruptError
from actstore.store.commits import file_digest, fsync_dir, open_regular
from actstore.store.layout import compressors, param_dims

ENV = "ACTSTORE_WEIGHT_CACHE"
RECORD = "record.json"
TAIL = 4  # bytes of a chunk's crc32c (little-endian) at its end, when the codec chain ends in crc32c
LAYOUT = 1  # bump when the bytes written for the same weights change
# files of an entry this process found holding their recorded bytes: {path: [inode, size, mtime_ns, ctime_ns]} as
# they were when read; trusted while a file's stat still equals it (any write to it moves its ctime)
_CHECKED: dict[str, list[int]] = {}
_PRECHECKS: dict[str, Future] = {}  # entry path -> its check_ahead still running
_SHARED: dict[str, "_Work"] = {}  # entry path -> the reads of its check_ahead while they run (place_params joins)
CRC_BLOCK = 1 << 20  # bytes read per block when checking a chunk's crc32c
_LOCK = threading.Lock()


def cache_dir() -> Path | None:
    """The weight cache: ACTSTORE_WEIGHT_CACHE, else $XDG_CACHE_HOME/actstore/weights; None if 'off'."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env).absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "actstore" / "weights"


def cache_key(weights_sha256: str, codec: Mapping[str, Any]) -> str:
    """What the bytes of params/ depend on: the weights, the codec chain, the zarr version, this layout."""
    spec = json.dumps({"weights": weights_sha256, "codec": dict(codec), "zarr": zarr.__version__, "layout": LAYOUT},
                      sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:32]


def check_ahead(weights_sha256: str, codec: Mapping[str, Any], cache: Path | None) -> None:
    """Check the cache entry of these weights now, on the calling thread, so that a place_params soon after (ingest:
    the store's creation, after the probe or beside the first chunk) finds its files checked and only compares their
    stat: ingest calls this on the thread that hashed the weights, while it makes the first batch and probes it (or
    runs the first chunk, where the store is created beside it) on the other core. A place_params that arrives while
    this check still runs joins it (its thread takes the files not yet started), so each file is read once per
    ingest. A file written in between (its ctime moves) is checked again by place_params; an entry found damaged is
    removed, as place_params would; an unusable cache is left to place_params."""
    if cache is None or not weights_sha256:
        return
    entry = cache / cache_key(weights_sha256, codec)
    future: Future = Future()
    with _LOCK:
        running = _PRECHECKS.get(str(entry))
        if running is not None and not running.done():
            return
        _PRECHECKS[str(entry)] = future
    try:
        _checked_record(entry, dict(codec).get("checksum", "crc32c") == "crc32c", workers=1, share=True)
    except OSError:
        pass
    finally:
        future.set_result(None)


def write_params(folder: Path, params: Mapping[str, np.ndarray], codec: Mapping[str, Any]) -> None:
    """One float32 array per weight under `folder` (a Zarr group directory, created if absent), one chunk each."""
    group = zarr.open_group(LocalStore(folder), mode="a", zarr_format=3)
    for name, value in params.items():
        value = np.ascontiguousarray(value, dtype=np.float32)
        arr = group.create_array(name, shape=value.shape, chunks=value.shape or (1,), dtype="float32",
                                 serializer=BytesCodec(), compressors=compressors(dict(codec)), fill_value=0,
                                 dimension_names=param_dims(name, value.ndim), config={"write_empty_chunks": True})
        arr[...] = value


def place_params(folder: Path, params: Mapping[str, np.ndarray], codec: Mapping[str, Any], weights_sha256: str,
                 cache: Path | None) -> dict[str, list[Any]]:
    """Fill `folder` (a store's params/ group directory) with the weight arrays, from the cache where it
    can; returns {path relative to `folder`: [size, sha256(, crc32c tail)]} of each chunk file and array
    zarr.json whose digest is known (empty when written without the cache: the caller hashes them)."""
    if cache is None or not weights_sha256:
        write_params(folder, params, codec)
        return {}
    key = cache_key(weights_sha256, codec)
    tail = dict(codec).get("checksum", "crc32c") == "crc32c"
    try:
        entry = cache / key
        with _LOCK:
            ahead = _PRECHECKS.pop(str(entry), None)
            work = _SHARED.get(str(entry))
        if work is not None:
            with contextlib.suppress(OSError):  # the ahead check's own error is its own (it drops it)
                work.join()  # take the files the ahead check has not started: the two read at once
        if ahead is not None:
            ahead.result()  # its findings are in _CHECKED
        record = _checked_record(entry, tail)
        if record is None:
            record = _build_entry(cache, key, params, codec, tail)
        _link_tree(entry / "params", folder, record["files"])
        _refresh_stat(entry, record)
        _prune(cache, keep=key)
    except OSError:  # an unwritable or vanished cache: the store gets its own copy, written directly
        _clear_arrays(folder)
        write_params(folder, params, codec)
        return {}
    return {rel: list(d) for rel, d in record["files"].items() if rel != "zarr.json"}  # the group's: the store's own


def _stat(path: Path) -> list[int]:
    s = path.stat()
    return [s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns]


def _digest(path: Path, tail: bool) -> list[Any]:
    return file_digest(path, tail=tail and path.name != "zarr.json")


def _only_ctime(now: list[int], was: Any) -> bool:
    """Whether two [inode, size, mtime_ns, ctime_ns] differ in ctime alone (a link made or removed)."""
    return isinstance(was, list) and len(was) == 4 and now[:3] == was[:3]


def _crc_matches(path: Path, want: list[Any]) -> bool:
    """Whether the chunk file at `path` is `want[0]` bytes ending in the tail `want[2]` (hex), and the crc32c
    of the bytes before the tail equals it."""
    try:
        fd = open_regular(path)
    except (OSError, StoreCorruptError):
        return False
    # unbuffered, in blocks of CRC_BLOCK: each block (a new bytes object: google_crc32c takes no other buffer)
    # is still in the CPU's cache when the crc reads it, and a whole block releases the GIL
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size != want[0] or size < TAIL:
            return False
        crc, left = 0, size - TAIL
        while left:
            block = f.read(min(left, CRC_BLOCK))
            if not block:
                return False
            crc = google_crc32c.extend(crc, block)
            left -= len(block)
        return f.read(TAIL) == bytes.fromhex(str(want[2])) == crc.to_bytes(TAIL, "little")


class _Work:
    """A list of checks that any number of threads take items from (each item run once); `join()` takes
    items until none is left, then waits for the ones other threads run, and returns every result in order
    (or raises the first error)."""

    def __init__(self, items: Sequence[Callable[[], bool]]) -> None:
        self._items = items
        self._results: list[Any] = [None] * len(items)
        self._next = 0
        self._left = len(items)
        self._lock = threading.Lock()
        self._done = threading.Event()
        if not items:
            self._done.set()

    def join(self) -> list[bool]:
        while True:
            with self._lock:
                i, self._next = self._next, self._next + 1
            if i >= len(self._items):
                break
            try:
                result: Any = self._items[i]()
            except BaseException as e:  # noqa: BLE001 - raised by every joiner, none left waiting
                result = e
            with self._lock:
                self._results[i] = result
                self._left -= 1
                if not self._left:
                    self._done.set()
        self._done.wait()
        for r in self._results:
            if isinstance(r, BaseException):
                raise r
        return list(self._results)


def _checked_record(entry: Path, tail: bool, workers: int = 8, share: bool = False) -> dict[str, Any] | None:
    """The entry's record if every file still holds what it records; None if there is no entry. An entry
    whose files differ from its record (or whose record is unreadable) is removed, then None. Reads with up
    to `workers` threads (fewer where there are fewer CPUs); `share`: a place_params of the same entry may
    join the reading meanwhile (check_ahead)."""
    try:
        record = json.loads((entry / RECORD).read_text())
        files, stats = dict(record["files"]), dict(record["stat"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        _remove(entry)
        return None
    folder = entry / "params"
    # a symlink is no file the cache wrote: a store would link the link, and lose its weight with the target
    now = _walk(folder) if not entry.is_symlink() else None
    if now is None or set(now) != set(files):
        _remove(entry)
        return None
    moved = [rel for rel in files if now[rel] != stats.get(rel) and now[rel] != _CHECKED.get(str(folder / rel))]
    checks = [functools.partial(_crc_matches, folder / rel, files[rel])
              if _only_ctime(now[rel], stats.get(rel)) and len(files[rel]) == 3 else
              functools.partial(_same_digest, folder / rel, tail, files[rel]) for rel in moved]
    work = _Work(checks)
    if share:
        with _LOCK:
            _SHARED[str(entry)] = work
    try:
        helpers = max(1, min(workers, os.cpu_count() or 1)) - 1
        with ThreadPoolExecutor(max_workers=helpers or 1) as pool:
            for _ in range(helpers if len(checks) > 1 else 0):
                pool.submit(work.join)
            intact = work.join()
    finally:
        if share:
            with _LOCK:
                _SHARED.pop(str(entry), None)
    if not all(intact):
        _remove(entry)  # bytes differ from what was recorded: never used, rebuilt from the model
        return None
    with _LOCK:
        _CHECKED.update({str(folder / rel): now[rel] for rel in moved})
    return {"key": record.get("key"), "files": files, "stat": stats}


def _same_digest(path: Path, tail: bool, want: list[Any]) -> bool:
    return _digest(path, tail) == list(want)


def _walk(folder: Path) -> dict[str, list[int]] | None:
    """{path relative to `folder`: [inode, size, mtime_ns, ctime_ns]} of every file under it, from one lstat
    each; None if `folder` or anything under it is a symlink or neither a file nor a directory."""
    found: dict[str, list[int]] = {}
    todo = [""]
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return None
        while todo:
            rel = todo.pop()
            with os.scandir(folder / rel if rel else folder) as it:
                for e in it:
                    s = e.stat(follow_symlinks=False)
                    sub = f"{rel}{os.sep}{e.name}" if rel else e.name
                    if stat.S_ISDIR(s.st_mode):
                        todo.append(sub)
                    elif stat.S_ISREG(s.st_mode):
                        found[sub] = [s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns]
                    else:
                        return None
    except FileNotFoundError:
        return {}
    return found


def _build_entry(cache: Path, key: str, params: Mapping[str, np.ndarray], codec: Mapping[str, Any],
                 tail: bool) -> dict[str, Any]:
    """Write, hash and fsync a new entry beside its final place, then rename it there (another ingest
    that renamed the same entry first wins; its entry is checked and used)."""
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{key}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_params(tmp / "params", params, codec)
        paths = sorted(p for p in (tmp / "params").rglob("*") if p.is_file())
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            digests = list(pool.map(lambda p: file_digest(p, fsync=True, tail=tail and p.name != "zarr.json"), paths))
        rels = [str(p.relative_to(tmp / "params")) for p in paths]
        record = {"key": key, "files": dict(zip(rels, digests)), "stat": {}}
        (tmp / RECORD).write_text(json.dumps(record, sort_keys=True))
        fsync_dir(tmp)
        try:
            os.rename(tmp, cache / key)
        except OSError:
            got = _checked_record(cache / key, tail)
            if got is None:
                raise
            return got
        fsync_dir(cache)
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link_tree(src: Path, dest: Path, files: Mapping[str, Any]) -> None:
    """Hard-link each recorded file of `src` to the same place under `dest` (copy where a link fails)."""
    rels = [rel for rel in files if rel != "zarr.json"]  # the params group's own document: the store has made it
    dirs = {parent for rel in rels for parent in Path(rel).parents if parent != Path(".")}
    dest.mkdir(parents=True, exist_ok=True)
    for d in sorted(dirs, key=lambda d: len(d.parts)):  # parents first: one mkdir each
        with contextlib.suppress(FileExistsError):
            os.mkdir(dest / d)
    for rel in rels:
        target = dest / rel
        try:
            os.link(src / rel, target)
        except OSError:
            shutil.copyfile(src / rel, target)
            with open(target, "rb+") as f:
                os.fsync(f.fileno())


def _refresh_stat(entry: Path, record: dict[str, Any]) -> None:
    """Record the files' stat after linking (a link changes an inode's ctime), atomically."""
    folder = entry / "params"
    record["stat"] = {rel: _stat(folder / rel) for rel in record["files"]}
    tmp = entry / f".{RECORD}.{os.getpid()}"
    tmp.write_text(json.dumps(record, sort_keys=True))
    os.replace(tmp, entry / RECORD)


def _prune(cache: Path, keep: str) -> None:
    """Remove every other entry that no store links (each of its chunk files has a single link), and what
    killed ingests left building or removing an entry (a whole copy of the weights each)."""
    for entry in cache.iterdir():
        left = _LEFTOVER.fullmatch(entry.name)
        if left is not None and not _running(int(left.group(1))) and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            continue
        if entry.name == keep or entry.name.startswith(".") or not entry.is_dir():
            continue
        if not _linked(entry / "params"):
            _remove(entry)


def _linked(folder: Path) -> bool:
    """Whether any chunk file under `folder` has another link (a store's); stops at the first one found."""
    todo = [folder]
    while todo:
        try:
            with os.scandir(todo.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        todo.append(Path(e.path))
                    elif e.name != "zarr.json" and e.stat(follow_symlinks=False).st_nlink > 1:
                        return True
        except FileNotFoundError:
            continue
    return False


_LEFTOVER = re.compile(r"\.[0-9a-f]{32}\.(?:building|removing)-(\d+)")  # _build_entry's and _remove's names


def _running(pid: int) -> bool:
    """Whether a process with this id runs (or exists but is not ours to signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _remove(entry: Path) -> None:
    """Move an entry aside in one rename (a concurrent reader sees it whole or not at all), then delete it."""
    with _LOCK:
        for path in [p for p in _CHECKED if p.startswith(f"{entry}{os.sep}")]:
            del _CHECKED[path]
    trash = entry.parent / f".{entry.name}.removing-{os.getpid()}"
    if trash.is_symlink() or not trash.is_dir():  # a killed process that had this pid (pids are reused) left it
        trash.unlink(missing_ok=True)
    else:
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(entry, trash)
    except OSError:
        return
    if trash.is_symlink():  # rmtree refuses a link; the link goes, not what it points to
        trash.unlink()
    else:
        shutil.rmtree(trash, ignore_errors=True)


def _clear_arrays(folder: Path) -> None:
    """Remove what a failed placement left under a params/ group directory (keeping its zarr.json)."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            elif p.name != "zarr.json":
                p.unlink()
