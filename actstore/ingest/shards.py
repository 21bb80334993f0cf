"""Sharded ingest: several processes write disjoint chunks of one store.

Shard i of N (`--shard i/N`, 0 <= i < N) owns the chunks k with k % N == i, so every shard gets
about the same work however far the store has got, and a shard never waits for another. Locks
(local stores), all `flock` on sibling files of the store:
- `.STORE.lock`: a plain ingest holds it exclusively (as before); every shard holds it shared, so
  shards of one store run together while a plain ingest and a shard refuse each other;
- `.STORE.shard-i-of-N.lock`: held exclusively by shard i, so two processes of one shard refuse
  each other;
- `.STORE.create.lock`: held while a shard creates or checks the store (the first shard to arrive
  creates it; the others wait, then find it and reuse it).

A chunk counts once its commit record exists, whichever process wrote it; the completion record is
written by whichever process sees every chunk committed at its end (or by a final plain rerun).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ContextManager

from actstore.errors import InvalidParameterError, StoreCorruptError
from actstore.store.commits import commit_files, committed_prefix, read_commit, read_file
from actstore.store.fs import RemotePath, StorePath
from actstore.store.integrity import COMPLETE_RECORD, STORE_RECORD
from actstore.store.layout import COMMITS, chunk_file, chunk_ranges, commit_path, meta_tables, part_path
from actstore.store.lock import acquire_flock, store_lock
from actstore.store.manifest import Manifest

_SHARD = re.compile(r"(\d+)/(\d+)", re.ASCII)
_MAX_SHARDS = 2**31 - 1  # far beyond any chunk count; keeps the shard's lock file name short


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """(i, N) from 'i/N' or a pair; (0, 1) for None (the whole store); InvalidParameterError otherwise."""
    if shard is None:
        return 0, 1
    if isinstance(shard, str):
        m = _SHARD.fullmatch(shard.strip())
        if m is None:
            raise InvalidParameterError(f"--shard must be I/N (shard I of N, 0 <= I < N), got {shard!r}")
        i, n = int(m.group(1)), int(m.group(2))
    else:
        try:
            i, n = shard
        except (TypeError, ValueError):
            raise InvalidParameterError(f"shard must be 'I/N' or a pair (I, N), got {shard!r}") from None
    if isinstance(i, bool) or isinstance(n, bool) or not (isinstance(i, int) and isinstance(n, int)) \
            or not 0 <= i < n <= _MAX_SHARDS:
        raise InvalidParameterError(f"--shard must be I/N with 0 <= I < N <= {_MAX_SHARDS}, got {shard!r}")
    return i, n


def shard_chunks(n_chunks: int, shard: tuple[int, int]) -> list[int]:
    """The chunks shard (i, N) owns: k % N == i."""
    i, n = shard
    return list(range(i, n_chunks, n))


def committed_ok(root: StorePath, manifest: Manifest, k: int, store_digests: set[str]) -> bool:
    """Whether chunk k has a commit record of this store (its range, a current or earlier store record)."""
    try:
        record = read_commit(root, k)
    except (StoreCorruptError, OSError):  # an unreadable record is redone
        return False
    ranges = chunk_ranges(manifest.n, manifest.chunk)
    return (record is not None and (record.chunk, record.start, record.stop) == (k, *ranges[k])
            and record.store in store_digests)


def store_digests(root: StorePath) -> set[str]:
    """sha256 of the store record and of every earlier one (a grown store): what commit records may name."""
    raw = read_file(root / COMMITS / STORE_RECORD)
    if raw is None:
        return set()
    try:
        previous = {str(d) for d in json.loads(raw).get("previous", [])}
    except (ValueError, AttributeError):
        previous = set()
    return {hashlib.sha256(raw).hexdigest(), *previous}


def all_committed(root: StorePath, n_chunks: int) -> bool:
    return committed_prefix(root, n_chunks) == n_chunks  # remote: one listing, not a request per chunk


def uncommitted(root: StorePath, manifest: Manifest, chunks: list[int], store_digests: set[str]) -> list[int]:
    """The chunks of `chunks` without a commit record of this store (see committed_ok); only the records
    listed are read (a fresh store at a URL costs one listing, not a request per chunk)."""
    listed = set(commit_files(root))
    return [k for k in chunks if k not in listed or not committed_ok(root, manifest, k, store_digests)]


def discard_chunks(root: StorePath, manifest: Manifest, chunks: list[int]) -> None:
    """Remove every file of `chunks` (left by a crash or a stale record), so they are rewritten whole;
    and the completion record, if any chunk is to be rewritten. Each chunk's record goes before its files."""
    if not chunks:
        return
    records = [root / COMMITS / COMPLETE_RECORD, *(commit_path(root, k) for k in chunks)]
    files = [chunk_file(root, h.name, k, len(h.shape)) for k in chunks for h in manifest.hooks]
    files += [part_path(root, table, k) for k in chunks for table in meta_tables(manifest)]
    if isinstance(root, RemotePath):  # one listing, then bulk deletes of what exists: the records, then the files
        present = {p.path for p in root.rglob("*")}
        root.unlink_many([p for p in records if isinstance(p, RemotePath) and p.path in present])
        root.unlink_many([p for p in files if isinstance(p, RemotePath) and p.path in present])
        return
    for path in records + files:
        path.unlink(missing_ok=True)
    for path in files[:len(chunks) * len(manifest.hooks)]:  # a killed Zarr write's temporary beside its chunk file
        for stray in path.parent.glob(f"{glob.escape(path.name)}.*.partial"):
            stray.unlink(missing_ok=True)


@contextlib.contextmanager
def writer_locks(out: Any, shard: tuple[int, int]) -> Iterator[Callable[[], ContextManager[None]]]:
    """Hold what a writer of shard `shard` holds for its whole run; yields the lock to take while
    creating or checking the store. A plain ingest (shard (0, 1)) holds the store lock alone."""
    if shard == (0, 1):
        with store_lock(out):
            yield contextlib.nullcontext
        return
    if not isinstance(out, Path):
        raise InvalidParameterError(f"--shard writes a local store; {out} is remote (ingest it unsharded)")
    out = out.absolute()
    i, n = shard
    base = out.parent / f".{out.name}"
    with _flock(Path(f"{base}.lock"), out, shared=True), \
            _flock(Path(f"{base}.shard-{i}-of-{n}.lock"), out, shared=False, what=f"shard {i}/{n} of"):
        yield lambda: _flock(Path(f"{base}.create.lock"), out, shared=False, wait=True)


@contextlib.contextmanager
def _flock(path: Path, store: Path, shared: bool, wait: bool = False, what: str = "") -> Iterator[None]:
    """flock `path` (created if absent); removed on release unless another process still holds it."""
    fd = acquire_flock(path, store, shared, wait, what)
    try:
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else holds it: safe to remove
            path.unlink(missing_ok=True)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)


__all__ = ["all_committed", "committed_ok", "discard_chunks", "parse_shard", "shard_chunks", "store_digests",
           "uncommitted", "writer_locks"]
