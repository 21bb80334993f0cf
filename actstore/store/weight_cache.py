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
- each file's stamp [inode, size, mtime, ctime, link count] is compared with the record's `stat` and with what
  this process last found checked (_CHECKED); a file equal to either is used as recorded (any write to it, through
  any link, moves its ctime);
- a file whose inode, size and mtime match and whose ctime and link count both moved is used as recorded too (but
  one in AUDIT of them, read again in turn: below), its new stamp recorded: making or deleting a store that links
  it (the entry's whole life between ingests) moves those two and nothing else, and no byte changes with them;
- any other file is read again: a weight chunk whose inode, size and mtime match and only its ctime moved (a write
  with its mtime put back, or a chmod) has its crc32c computed over its bytes and compared with the recorded tail
  (the check every read makes, and what ties a chunk to its record on the read path: integrity.py); any other
  change (or a file without a crc32c tail, as each zarr.json) is hashed again with sha256 and compared with the
  recorded digest. A file whose bytes differ has the entry removed and rebuilt from the model.
What that catches, and what not (the threat model): the cache guards against accidents and trusts its own records.
An accidental in-place edit of a linked file, through any store or the entry itself, moves its mtime (hashed
again) or, with the mtime put back, its ctime with the link count unchanged (its crc32c read again); a rewrite
through a new file (an editor's save, a copy over it) changes the inode, and a cut or grown file its size.
Only an edit that puts the mtime back and also coincides with a store linking or unlinking that file before the
next ingest is used unread; like a deliberate forgery that keeps the crc32c tail (tests/fuzz, an xfail: no
stamp check stops someone who can write the cache and its records), it still fails every read of the chunk
whose crc32c it broke, and `actstore verify` (sha256 of every file) catches both. Such damage would outlive the
store it went through (every later store of those weights would link the same chunk, refused on every read:
finding V9-1, tests/fuzz/test_fuzz_weight_cache_v9.py), so each check also reads again one in AUDIT (8) of the
files it accepted on a link-count move, in turn (by name order; the turn is in the record): within AUDIT ingests
every such file has been read, and a damaged entry is removed and rebuilt (~70 MB of 592 read per GPT-2-small
ingest, against all of it before). The stamps are recorded again after every check that saw one move, and after
linking a new store as that linking left them (only where inode, size and mtime are still those checked), so the
next ingest after this store is deleted reads only its audit share; a ctime-and-link-count move is only
accepted from the latest stamp known (by ctime).
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
LAYOUT = 2  # bump when the files written for the same weights change (2: chunk keys 'c.0.0', no c/ directories)
# files of an entry this process found holding their recorded bytes: {path: [inode, size, mtime_ns, ctime_ns,
# nlink]} as they were when read; trusted while a file's stamp still equals it (any write to it moves its ctime)
_CHECKED: dict[str, list[int]] = {}
_PRECHECKS: dict[str, Future] = {}  # entry path -> its check_ahead still running
_SHARED: dict[str, "_Work"] = {}  # entry path -> the reads of its check_ahead while they run (place_params joins)
CRC_BLOCK = 1 << 20  # bytes read per block when checking a chunk's crc32c
AUDIT = 8  # of the files accepted unread on a link-count move, one in AUDIT is read again per check, in turn
_LOCK = threading.Lock()
_READS = [0]  # files of entries this process has read again to check them (files_read)


def cache_dir() -> Path | None:
    """The weight cache: ACTSTORE_WEIGHT_CACHE, else $XDG_CACHE_HOME/actstore/weights; None if 'off'."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env).absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "actstore" / "weights"


def files_read() -> int:
    """How many files of cache entries this process has read again (crc32c or sha256) to check them: a
    benchmark's or test's measure of what a placement cost beyond comparing stamps."""
    return _READS[0]


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
                                 dimension_names=param_dims(name, value.ndim), config={"write_empty_chunks": True},
                                 chunk_key_encoding={"name": "default", "separator": "."})
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


def _digest(path: Path, tail: bool) -> list[Any]:
    return file_digest(path, tail=tail and path.name != "zarr.json")


def _stamp(s: os.stat_result) -> list[int]:
    return [s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_nlink]


def _only_ctime(now: list[int], was: Any) -> bool:
    """Whether two stamps have the same inode, size and mtime (records before the link count had 4 fields)."""
    return isinstance(was, list) and len(was) in (4, 5) and now[:3] == was[:3]


def _links_only(now: list[int], was: Any) -> bool:
    """Whether two stamps differ in ctime and link count only, as linking or unlinking a store leaves a file."""
    return isinstance(was, list) and len(was) == 5 and now[:3] == was[:3] and now[4] != was[4]


def _newest(*known: Any) -> Any:
    """The latest of a file's known stamps (by ctime), None if none."""
    valid = [k for k in known if isinstance(k, list) and len(k) in (4, 5)]
    return max(valid, key=lambda k: k[3]) if valid else None


def _as_checked(now: list[int], *known: Any) -> bool:
    """Whether a file's stamp `now` shows it as it was when one of the `known` stamps (a record's, a check's) was
    taken: equal to one (any write since would have moved the ctime), or moved from the latest in ctime and link
    count only (a store linked or deleted since; comparing with an older one would let a write hide behind it)."""
    return now in known or _links_only(now, _newest(*known))


def _crc_matches(path: Path, want: list[Any]) -> bool:
    """Whether the chunk file at `path` is `want[0]` bytes ending in the tail `want[2]` (hex), and the crc32c
    of the bytes before the tail equals it."""
    with _LOCK:
        _READS[0] += 1
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
    known = {rel: (stats.get(rel), _CHECKED.get(str(folder / rel))) for rel in files}
    moved = [rel for rel in files if not _as_checked(now[rel], *known[rel])]
    # files accepted unread on a link-count move: one in AUDIT of them (by its place in name order, a turn per check)
    # is read again, so that damage hidden behind such a move is found within AUDIT checks
    turn = record.get("audit", 0)
    turn = turn if isinstance(turn, int) and not isinstance(turn, bool) and turn >= 0 else 0
    unread = {rel for rel in files if now[rel] not in known[rel]} - set(moved)
    audit = [rel for i, rel in enumerate(sorted(files)) if rel in unread and i % AUDIT == turn % AUDIT]
    moved += audit
    checks = [functools.partial(_crc_matches, folder / rel, files[rel])
              if _only_ctime(now[rel], _newest(*known[rel])) and len(files[rel]) == 3 else
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
        _CHECKED.update({str(folder / rel): now[rel] for rel in files})
    record = {"key": record.get("key"), "files": files, "stat": stats, "audit": turn + 1 if unread else turn}
    if now != stats:  # the stamps as checked now: a write after this check moves a ctime from them
        with contextlib.suppress(OSError):
            _write_record(entry, {**record, "stat": now})
    return {**record, "checked": now}


def _same_digest(path: Path, tail: bool, want: list[Any]) -> bool:
    with _LOCK:
        _READS[0] += 1
    return _digest(path, tail) == list(want)


def _walk(folder: Path) -> dict[str, list[int]] | None:
    """{path relative to `folder`: [inode, size, mtime_ns, ctime_ns, nlink]} of every file under it, from one lstat
    each (directories and symlinks are told by their directory entry's type); None if `folder` or anything under it
    is a symlink or neither a file nor a directory."""
    found: dict[str, list[int]] = {}
    top = os.fspath(folder)
    todo = [""]
    try:
        if not stat.S_ISDIR(os.lstat(top).st_mode):
            return None
        while todo:
            rel = todo.pop()
            with os.scandir(os.path.join(top, rel) if rel else top) as it:
                for e in it:
                    sub = f"{rel}{os.sep}{e.name}" if rel else e.name
                    if e.is_dir(follow_symlinks=False):
                        todo.append(sub)
                        continue
                    s = e.stat(follow_symlinks=False) if e.is_file(follow_symlinks=False) else None
                    if s is None or not stat.S_ISREG(s.st_mode):
                        return None
                    found[sub] = _stamp(s)
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
    """Hard-link each recorded file of `src` to the same place under `dest` (copy where a link fails).

    One mkdir per directory, parents first, and one link per file, each relative to an open directory (no
    path objects, no lookup of the whole path per call): ~300 links and ~450 directories for GPT-2 small."""
    rels = [rel for rel in files if rel != "zarr.json"]  # the params group's own document: the store has made it
    dirs = {rel[:i] for rel in rels for i, ch in enumerate(rel) if ch == os.sep}
    dest.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
    src_fd = os.open(src, flags)
    try:
        dest_fd = os.open(dest, flags)
        try:
            for d in sorted(dirs):  # a parent sorts before everything under it
                with contextlib.suppress(FileExistsError):
                    os.mkdir(d, dir_fd=dest_fd)
            for rel in rels:
                try:
                    os.link(rel, rel, src_dir_fd=src_fd, dst_dir_fd=dest_fd, follow_symlinks=False)
                except OSError:
                    _copy(src / rel, dest / rel)
        finally:
            os.close(dest_fd)
    finally:
        os.close(src_fd)


def _copy(src: Path, target: Path) -> None:
    """A durable copy of `src` at `target` (where a hard link fails: another filesystem)."""
    shutil.copyfile(src, target)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())


def _refresh_stat(entry: Path, record: dict[str, Any]) -> None:
    """Record the files' stamps after linking (a link moves an inode's ctime and link count), atomically: each as
    found now where its inode, size and mtime are still those checked (`record["checked"]`; all of them for an entry
    just built), so the next ingest compares stamps only; a file that changed meanwhile keeps no stamp (read again)."""
    checked = record.pop("checked", None)
    fd = os.open(entry / "params", os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:  # one lstat per recorded file, relative to the directory: no walk of its ~450 directories
        now = {rel: _stamp(os.stat(rel, dir_fd=fd, follow_symlinks=False)) for rel in sorted(record["files"])}
    finally:
        os.close(fd)
    record["stat"] = {rel: st for rel, st in now.items() if checked is None or _only_ctime(st, checked.get(rel))}
    _write_record(entry, record)


def _write_record(entry: Path, record: Mapping[str, Any]) -> None:
    """Replace the entry's record in one rename (a reader sees the old or the new one whole)."""
    tmp = entry / f".{RECORD}.{os.getpid()}.{threading.get_ident()}"
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
