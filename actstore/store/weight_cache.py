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

Never trusted blindly: a file of an entry is used as recorded only while its (inode, size,
mtime, ctime) match the record (any write to it, through any link, changes its ctime); else it
is checked again, and a file whose bytes differ from the record has the entry removed and
rebuilt from the model. Linking or deleting any store's link also changes the shared inode's
ctime (and nothing else), so a weight chunk whose inode, size and mtime still match and only
its ctime moved is read again and its crc32c checked against the recorded tail (the check every
read makes, and what ties a chunk to its record on the read path: integrity.py); any other
change (or a file without a crc32c tail) is hashed again with sha256. An entry that no store
links any more is removed by the next ingest of other weights into the same cache, as is what a
killed ingest left building or removing an entry.

```
CACHE/<key>/record.json        {"key", "files": {path: [size, sha256, crc32c tail]}, "stat": {path: [...]}}
CACHE/<key>/params/<name>/...  zarr.json and chunk of each weight, as params/<name>/ of a store
```
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Mapping
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
    """Check the cache entry of these weights now, on the calling thread, so that a place_params soon after
    (ingest: the store's creation, once the probe is done) finds its files checked and only compares their
    stat: ingest calls this on the thread that hashed the weights, while the probe runs on the other core.
    A file written in between (its ctime moves) is checked again by place_params; an entry found damaged is
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
        _checked_record(entry, dict(codec).get("checksum", "crc32c") == "crc32c", workers=1)
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
    can; returns {path relative to `folder`: [size, sha256(, crc32c tail)]} of each chunk file whose
    digest is known (empty when written without the cache: the caller hashes them)."""
    if cache is None or not weights_sha256:
        write_params(folder, params, codec)
        return {}
    key = cache_key(weights_sha256, codec)
    tail = dict(codec).get("checksum", "crc32c") == "crc32c"
    try:
        entry = cache / key
        with _LOCK:
            ahead = _PRECHECKS.pop(str(entry), None)
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
    return {rel: list(d) for rel, d in record["files"].items() if not rel.endswith("zarr.json")}


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
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != want[0] or size < TAIL:
            return False
        crc, left = 0, size - TAIL
        while left:
            block = f.read(min(left, 1 << 22))
            if not block:
                return False
            crc = google_crc32c.extend(crc, block)
            left -= len(block)
        return f.read(TAIL) == bytes.fromhex(str(want[2])) == crc.to_bytes(TAIL, "little")


def _checked_record(entry: Path, tail: bool, workers: int = 8) -> dict[str, Any] | None:
    """The entry's record if every file still holds what it records; None if there is no entry. An entry
    whose files differ from its record (or whose record is unreadable) is removed, then None. Reads with up
    to `workers` threads (fewer where there are fewer CPUs)."""
    try:
        record = json.loads((entry / RECORD).read_text())
        files, stats = dict(record["files"]), dict(record["stat"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        _remove(entry)
        return None
    folder = entry / "params"
    found = list(folder.rglob("*")) if folder.is_dir() else []
    on_disk = {str(p.relative_to(folder)) for p in found if p.is_file()}
    # a symlink is no file the cache wrote: a store would link the link, and lose its weight with the target
    if on_disk != set(files) or any(p.is_symlink() for p in (entry, folder, *found)):
        _remove(entry)
        return None
    now = {rel: _stat(folder / rel) for rel in files}
    moved = [rel for rel in files if now[rel] != stats.get(rel) and now[rel] != _CHECKED.get(str(folder / rel))]
    relinked = {rel for rel in moved if _only_ctime(now[rel], stats.get(rel)) and len(files[rel]) == 3}
    rehash = [rel for rel in moved if rel not in relinked]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1))) as pool:
        fresh = list(pool.map(lambda rel: _digest(folder / rel, tail), rehash))
        intact = list(pool.map(lambda rel: _crc_matches(folder / rel, files[rel]), relinked))
    if any(d != list(files[rel]) for rel, d in zip(rehash, fresh)) or not all(intact):
        _remove(entry)  # bytes differ from what was recorded: never used, rebuilt from the model
        return None
    with _LOCK:
        _CHECKED.update({str(folder / rel): now[rel] for rel in moved})
    return {"key": record.get("key"), "files": files, "stat": stats}


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
    made: set[Path] = set()
    for rel in files:
        if rel == "zarr.json":
            continue  # the params group's own document: the store has made it
        target = dest / rel
        if target.parent not in made:  # each directory made once (parents included)
            target.parent.mkdir(parents=True, exist_ok=True)
            made.update(target.parents)
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
        chunks = [p for p in (entry / "params").rglob("*") if p.is_file() and p.name != "zarr.json"]
        if all(p.stat().st_nlink == 1 for p in chunks):
            _remove(entry)


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
