"""Creating a store and writing its chunks under the commit protocol.

`create_store` builds the whole skeleton (manifest, empty full-shape activation arrays, the
weights) in a hidden sibling directory and renames it into place, so a store either exists
with its manifest and weights or not at all. `ChunkWriter.write_chunk` writes one chunk's
arrays and meta parts, then its commit record (see `commits.py`).

Deferred commits (`ChunkWriter(..., defer_commit=True)`, what ingest uses on a local store): making
chunk k's files durable (fsync), hashing them and writing its commit record run on a committer
thread while the caller goes on to encode and write chunk k+1. On a local store each array's chunk
file starts its fsync and hash as soon as Zarr has written it, while the chunk's other arrays are
still encoding (the last chunk's commit, which nothing overlaps, waits less). The record is still written only
after every file of its chunk is durable, names included (each directory that got a new entry for the
chunk is fsynced once, after the files), and records are written in chunk order, so what a crash
leaves is what it left before: committed chunks whole, anything else discarded by the resume.

On an object store (store/fs.py) there is no rename: the skeleton is built in a local temporary
directory as above and uploaded with the root `zarr.json` (the manifest) last, so the prefix is a
store only once everything else is there. Chunks are written through Zarr's FsspecStore (a chunk's
arrays at once, then its parts at once, then its commit object), and each file's digest is of the
object as the server holds it: taken from the bytes sent where the PUT's ETag proves the server holds
exactly those (commits.put_digest), read back otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Mapping
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import zarr
from zarr.codecs import BytesCodec
from zarr.core.array_spec import ArrayConfigParams
from zarr.core.sync import sync
from zarr.storage import LocalStore

from actstore.errors import InvalidParameterError, StoreCorruptError, StoreWriteError
from actstore.store.commits import (CommitRecord, atomic_write_bytes, commit_files, commit_path, committed_prefix,
                                    file_digest, fsync_dir, new_entry_dirs, put_digest, write_commit)
from actstore.store.fs import RemotePath, StorePath, relative, zarr_store
from actstore.store.integrity import (COMPLETE_RECORD, STORE_RECORD, write_complete_record,
                                      write_store_record)
from actstore.store.layout import (ACTS, COMMITS, PARAMS, as_array, chunk_file, chunk_ranges, compressors,
                                   meta_tables, part_path)
from actstore.store.manifest import MANIFEST_KEY, Manifest
from actstore.store.parts import part_bytes, write_part
from actstore.store.weight_cache import cache_dir, place_params

# Test hook: "K:PHASE" makes the process SIGKILL itself after chunk K's PHASE
# ('arrays', 'meta' or 'commit') is written; used by the crash/resume tests only.
KILL_ENV = "ACTSTORE_TEST_KILL"

DIR_FSYNCS = 16  # directory fsyncs in flight at once per chunk

_WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}  # every chunk has a file, even an all-zero one


def create_store(path: StorePath, manifest: Manifest, params: Mapping[str, np.ndarray],
                 publish: Callable[[], None] | None = None) -> None:
    """Create an empty store at `path` (absent or an empty directory) with its weights.

    params: {TransformerLens state-dict name: array}, stored as float32, one chunk each.
    publish: called once the skeleton is built and durable, just before it is renamed into place (local
    stores only); whatever it raises removes the skeleton, so nothing is created (ingest: the wait for its
    first batch, which checks the hook shapes where they came from the model's config).
    The caller holds the store's lock (lock.py), so no other process creates or writes it.
    """
    if isinstance(path, RemotePath):
        if publish is not None:
            publish()
        _create_remote(path, manifest, params)
        return
    path = Path(path)
    tmp = path.parent / f".{path.name}.creating-{os.getpid()}"
    try:
        _build(tmp, manifest, params, cache_dir())
        fsync_dir(tmp)
        if publish is not None:
            publish()
        if path.exists():
            path.rmdir()  # an empty directory the caller made; rename needs it gone
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:  # a path the OS refuses (read-only or special filesystem, disk full)
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreWriteError(f"cannot create a store at {str(path)!r}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _create_remote(path: RemotePath, manifest: Manifest, params: Mapping[str, np.ndarray]) -> None:
    """create_store on an object store: built locally, uploaded with the root zarr.json last."""
    with tempfile.TemporaryDirectory(prefix="actstore-create-") as folder:
        tmp = Path(folder) / "store"
        _build(tmp, manifest, params, cache_dir())
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        try:
            path.fs.pipe({(path / str(p.relative_to(tmp))).path: p.read_bytes()
                          for p in files if p != tmp / "zarr.json"})
            (path / "zarr.json").write_bytes((tmp / "zarr.json").read_bytes())
        except OSError as e:
            raise StoreWriteError(f"cannot create a store at {path.url!r}: {e}") from None


def _build(tmp: Path, manifest: Manifest, params: Mapping[str, np.ndarray], cache: Path | None = None) -> None:
    """The whole skeleton of a new store in the local directory `tmp` (which must not exist); the weights
    come from the weight cache `cache` where it holds them (weight_cache.py)."""
    root = zarr.open_group(LocalStore(tmp), mode="w-", zarr_format=3,
                           attributes={MANIFEST_KEY: manifest.to_dict()})
    acts = root.create_group(ACTS)
    codecs = compressors(manifest.codec)
    for h in manifest.hooks:
        acts.create_array(h.name, shape=h.shape, chunks=(manifest.chunk, *h.shape[1:]), dtype=h.dtype,
                          serializer=BytesCodec(), compressors=codecs, fill_value=0,
                          dimension_names=h.dims)
    root.create_group(PARAMS)
    known = place_params(tmp / PARAMS, params, manifest.codec, manifest.weights_sha256, cache)
    write_store_record(tmp, manifest, known={f"{PARAMS}/{rel}": d for rel, d in known.items()})


def remove_store(path: StorePath) -> None:
    """Delete the store at `path` (the caller holds its lock): locally moved aside in one rename, then
    deleted; on an object store its root zarr.json goes first, so it stops being a store at once."""
    if isinstance(path, RemotePath):
        try:
            path.rmtree()
        except OSError as e:
            raise StoreWriteError(f"cannot replace the store at {path.url!r}: {e}") from None
        return
    trash = path.parent / f".{path.name}.deleting-{os.getpid()}"
    try:
        os.rename(path, trash)
    except OSError as e:
        raise StoreWriteError(f"cannot replace the store at {str(path)!r}: {e.strerror or e}") from None
    shutil.rmtree(trash, ignore_errors=True)


def remove_interrupted_creation(path: RemotePath) -> None:
    """Delete what an upload of a new store that was cut short left at `path` (the caller holds the
    lock): a store record but no root zarr.json and no commit record, so no chunk was ever written."""
    if (path / "zarr.json").exists() or not (path / COMMITS / STORE_RECORD).exists() or commit_files(path):
        return
    path.rmtree()


class ChunkWriter:
    """Writes chunks of an existing store; not thread-safe (use one writer thread).

    defer_commit: write_chunk returns once the chunk's files are written; their fsync, digests and the
    commit record follow on a committer thread (at most one chunk behind). `flush()` waits for it and
    raises its error; a commit's error is also raised by the next write_chunk.
    """

    def __init__(self, path: StorePath, manifest: Manifest, defer_commit: bool = False) -> None:
        self.root: StorePath = path if isinstance(path, RemotePath) else Path(path)
        self.manifest = manifest
        self._sent: dict[str, list[Any]] = {}  # remote: {object path: digest} of the chunk's puts the server proved
        group = zarr.open_group(zarr_store(self.root / ACTS, read_only=False, on_put=self._proved), mode="r+",
                                zarr_format=3)
        self.arrays = {h.name: as_array(group, ACTS, h.name, self.root).with_config(_WRITE_CONFIG)
                       for h in manifest.hooks}
        self.ranges = chunk_ranges(manifest.n, manifest.chunk)
        self.tables = meta_tables(manifest)  # examples, tokens, outputs (+ topk where the manifest keeps it)
        self.store_sha256 = file_digest(self.root / COMMITS / STORE_RECORD)[1]
        self._crc32c_tail = manifest.codec.get("checksum", "crc32c") == "crc32c"
        self._kill = _parse_kill(os.environ.get(KILL_ENV))
        self._pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="actstore-digest")
        # a chunk's directory fsyncs, all at once: each waits on the disk (no CPU), and concurrent ones share flushes
        self._dir_pool = ThreadPoolExecutor(max_workers=DIR_FSYNCS, thread_name_prefix="actstore-dirsync")
        # one committer thread; a remote store's digests come from its PUTs (self._sent), so it commits inline
        self._committer = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="actstore-commit")
                           if defer_commit and not isinstance(self.root, RemotePath) else None)
        self._pending: Future | None = None  # the commit of the chunk written last, while deferred

    def write_chunk(self, k: int, acts: Mapping[str, np.ndarray], meta: Mapping[str, pl.DataFrame | bytes]) -> int:
        """Write chunk k (arrays [stop - start, ...] per hook; per meta table its frame, or the frame's part
        bytes from parts.part_bytes, made ahead by the caller), then commit it (deferred: hand the commit to
        the committer thread, after the previous chunk's commit is done). A local store's parts are written
        while Zarr encodes the arrays.

        Returns the bytes written to disk (compressed chunks and parts).
        """
        start, stop = self.ranges[k]
        if set(acts) != set(self.arrays) or set(meta) != set(self.tables):
            raise StoreCorruptError(f"chunk {k}: got arrays {sorted(acts)} and tables {sorted(meta)}, "
                                    f"expected {sorted(self.arrays)} and {list(self.tables)}")
        for name, data in acts.items():
            if data.shape[0] != stop - start:
                raise StoreCorruptError(f"chunk {k} of {name}: {data.shape[0]} rows for examples [{start}, {stop})")

        local = not isinstance(self.root, RemotePath)
        early: dict[StorePath, Future] = {}  # local: each array's chunk file -> its digest (fsync + sha256)
        dirs: set[Path] = set()  # local: the directories that get a new entry for this chunk, fsynced before its record

        async def put(name: str, arr: zarr.Array) -> None:
            path = chunk_file(self.root, name, k, arr.ndim)
            if isinstance(path, Path):  # local: before Zarr makes the chunk's directories
                dirs.update(new_entry_dirs(path))
            await arr.async_array.setitem(slice(start, stop), acts[name])
            if local:  # written whole: make it durable and hash it while the other arrays encode
                early[path] = self._pool.submit(self._digest, path, self._crc32c_tail)

        async def put_all() -> None:  # every array at once: zarr encodes the chunks on its thread pool
            await asyncio.gather(*(put(name, arr) for name, arr in self.arrays.items()))

        self._sent.clear()
        parts = [part_path(self.root, table, k) for table in self.tables]
        writing: list[Future] = []  # local: the parts, written (fsync included) on the pool while the arrays encode
        if local:
            for table, path in zip(self.tables, parts):
                if isinstance(path, Path):
                    dirs.update(new_entry_dirs(path))
                writing.append(self._pool.submit(_write_meta, meta[table], path))
        try:
            sync(put_all())
        finally:
            for f in writing:  # every part finished (or failed) before anything else touches the chunk
                f.exception()
        if not local:
            self._maybe_die(k, "arrays")
        paths = [chunk_file(self.root, name, k, arr.ndim) for name, arr in self.arrays.items()]
        if isinstance(self.root, RemotePath):  # one PUT each, all at once (the commit object still waits for them)
            list(self._pool.map(lambda t, p: self._put_part(meta[t], p), self.tables, parts))
        for f in writing:
            f.result()  # raises a part's write error
        if local:
            self._maybe_die(k, "arrays")  # arrays and parts are written together: both points are after them
        paths += parts
        self._maybe_die(k, "meta")
        if self._committer is None:
            return self._commit(k, paths, early, dirs)
        self.flush()  # chunk k-1's record before chunk k's: records stay in order, one chunk in flight
        self._pending = self._committer.submit(self._commit, k, paths, early, dirs)
        return sum(os.stat(p).st_size for p in paths if isinstance(p, Path))  # deferred: local stores only

    def _commit(self, k: int, paths: list[StorePath], early: Mapping[StorePath, Future] | None = None,
                dirs: set[Path] | frozenset[Path] = frozenset()) -> int:
        """Make chunk k's written files durable, hash them, then write its commit record; returns their bytes.
        early: the digests (fsync included) already started for some of `paths`; dirs: the local directories
        that got a new entry for the chunk, fsynced (each once) after the files and before the record, so a
        power cut cannot keep the record and lose a file's name."""
        start, stop = self.ranges[k]
        early = early or {}
        tails = [self._crc32c_tail] * len(self.arrays) + [False] * len(self.tables)
        pending = [early[p] if p in early else self._pool.submit(self._digest, p, tail)  # sha256 drops the GIL
                   for p, tail in zip(paths, tails)]
        files = {relative(f, self.root): d.result() for f, d in zip(paths, pending)}
        list(self._dir_pool.map(fsync_dir, sorted(dirs)))  # after the files' fsyncs; raises the first error
        write_commit(self.root, CommitRecord(chunk=k, start=start, stop=stop, files=files, store=self.store_sha256))
        self._maybe_die(k, "commit")
        # deferred: the caller finishes after flush(), under its shards' finishing lock (two shards finishing
        # at once would race on the completion record's temporary file)
        if self._committer is None and k == len(self.ranges) - 1 and \
                committed_prefix(self.root, len(self.ranges)) == len(self.ranges):
            self.finish()
        return sum(int(v[0]) for v in files.values())

    def flush(self) -> None:
        """Wait for the deferred commit in flight (if any); raises its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _proved(self, path: str, data: bytes, response: Any) -> None:
        """on_put of the remote arrays: keep the digest of a PUT the server's response proves."""
        digest = put_digest(data, response, self._crc32c_tail)
        if digest is not None:
            self._sent[path] = digest

    def _put_part(self, frame: pl.DataFrame | bytes, path: RemotePath) -> None:
        data = frame if isinstance(frame, bytes) else part_bytes(frame)
        digest = put_digest(data, path.put(data))
        if digest is not None:
            self._sent[path.path] = digest

    def _digest(self, path: StorePath, tail: bool) -> list[Any]:
        """file_digest of a file just written (fsynced locally); a remote object the PUT proved is not read back."""
        if isinstance(path, RemotePath) and path.path in self._sent:
            digest = self._sent[path.path]
            return digest if tail else digest[:2]
        return file_digest(path, fsync=True, tail=tail)

    def finish(self) -> None:
        """Write the completion record once every chunk is committed (idempotent)."""
        if not (self.root / COMMITS / COMPLETE_RECORD).exists():
            write_complete_record(self.root, len(self.ranges))

    def close(self) -> None:
        """Wait for a deferred commit in flight (its error is not raised here: call flush() first for it)."""
        if self._committer is not None:
            self._committer.shutdown()
        self._pool.shutdown()
        self._dir_pool.shutdown()

    def discard_uncommitted(self, first: int, best_effort: bool = False) -> None:
        """Remove the files of chunks >= first (left by a crash), so a resume rewrites them whole.

        best_effort: after a failed write, errors removing files are ignored.
        """
        if best_effort:
            try:
                self.discard_uncommitted(first)
            except OSError:
                pass
            return
        if first < len(self.ranges):
            (self.root / COMMITS / COMPLETE_RECORD).unlink(missing_ok=True)
        for k in commit_files(self.root):
            if k >= first:
                commit_path(self.root, k).unlink()
        for k in range(first, len(self.ranges)):
            for name, arr in self.arrays.items():
                chunk_file(self.root, name, k, arr.ndim).unlink(missing_ok=True)
            for table in self.tables:
                part_path(self.root, table, k).unlink(missing_ok=True)

    def _maybe_die(self, k: int, phase: str) -> None:
        if self._kill == (k, phase):
            if phase != "commit" and self._pending is not None:
                # the test hook's kill points name a state with every earlier chunk committed; crashes
                # between a chunk's write and the previous chunk's commit are left to the timed kills
                self._pending.result()
            os.kill(os.getpid(), signal.SIGKILL)


def _write_meta(part: pl.DataFrame | bytes, path: StorePath) -> None:
    """Write one meta part atomically (parts.write_part), from its frame or from its part_bytes; its
    directory's new entry is fsynced with the chunk's others (ChunkWriter)."""
    if isinstance(part, pl.DataFrame):
        write_part(part, path)
        return
    if not isinstance(path, RemotePath):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, part, sync_dir=False)


def _parse_kill(value: str | None) -> tuple[int, str] | None:
    if not value:
        return None
    k, _, phase = value.partition(":")
    if not k.isdigit() or phase not in ("arrays", "meta", "commit"):
        raise InvalidParameterError(f"{KILL_ENV} must be CHUNK:arrays|meta|commit, got {value!r}")
    return int(k), phase


__all__ = ["create_store", "remove_store", "remove_interrupted_creation", "ChunkWriter", "KILL_ENV"]
