"""Checked cache files: the `derived/` tables, each with a digest record written after it.

A cached file `derived/NAME.parquet` counts only while its record `derived/NAME.parquet.sha256`
(JSON: {"sha256": ..., "size": ...}) matches its bytes. Anything else (no record, another size
or digest: a truncated, bit-flipped or replaced file) is a cache miss: the reader recomputes.

    write_checked(path, write)   write(tmp) fills a temporary file; it becomes `path`, then the record
    read_checked(path)           the file's bytes if its record matches, else None
    cache_problems(root)         one line per cached file of a store that its record does not vouch for

Both files are written under unique temporary names and renamed into place, and a failed write
(a full disk, a read-only directory) leaves no temporary file behind. The record is removed
before the file is replaced and written after it, so no reader ever pairs a new file with an
old record. On an object store (store/fs.py) `write` fills a local temporary file, which is
put in one request (atomic by itself), then the record is put.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from actstore.errors import StoreCorruptError
from actstore.store.commits import file_digest, read_file
from actstore.store.fs import RemotePath, StorePath, children
from actstore.store.layout import DERIVED

RECORD_SUFFIX = ".sha256"
CACHED_GLOB = "*.parquet"  # the cached tables of derived/ (records and temporary files do not match)


def record_path(path: StorePath) -> StorePath:
    """Where the digest record of cache file `path` lives."""
    return path.with_name(path.name + RECORD_SUFFIX)


def digest(data: bytes) -> dict[str, object]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def write_checked(path: StorePath, write: Callable[[Path], None]) -> None:
    """Write a cache file through `write(tmp)` and record its digest; any failure (OSError from a
    full disk or a read-only directory, or whatever `write` raises) propagates after the
    temporary files are removed. A failure after the file was renamed into place leaves it
    without a record: a cache miss, never a wrong hit."""
    if isinstance(path, RemotePath):
        _write_remote(path, write)
        return
    path = Path(path)
    record = path.with_name(path.name + RECORD_SUFFIX)
    tmp = _tmp_name(path)
    try:
        write(tmp)
        size, sha256 = file_digest(tmp)
        entry = {"sha256": sha256, "size": size}
        record.unlink(missing_ok=True)
        os.replace(tmp, path)
        _atomic_write(record, (json.dumps(entry, sort_keys=True) + "\n").encode())
    finally:
        _remove(tmp)


def _write_remote(path: RemotePath, write: Callable[[Path], None]) -> None:
    """write_checked on an object store: the record is removed first and put last, as locally."""
    with tempfile.TemporaryDirectory(prefix="actstore-cache-") as folder:
        tmp = Path(folder) / path.name
        write(tmp)
        data = tmp.read_bytes()
    record = record_path(path)
    record.unlink(missing_ok=True)
    path.write_bytes(data)
    record.write_bytes((json.dumps(digest(data), sort_keys=True) + "\n").encode())


def read_checked(path: StorePath) -> bytes | None:
    """The bytes of cache file `path` if its record vouches for them; None if either is absent,
    unreadable, or they disagree."""
    path = _as_path(path)
    try:
        expected = _read_record(record_path(path))
        if expected is None:
            return None
        data = read_file(path)  # never blocks: a FIFO here is StoreCorruptError, a miss
    except (OSError, StoreCorruptError):
        return None
    if data is None or len(data) != expected["size"]:
        return None
    return data if hashlib.sha256(data).hexdigest() == expected["sha256"] else None


def check_file(path: StorePath) -> str | None:
    """Why the record of cache file `path` does not vouch for it (None when it does)."""
    path = _as_path(path)
    record = record_path(path)
    try:
        expected = _read_record(record)
    except (OSError, StoreCorruptError) as e:
        return f"its digest record {record.name} cannot be read ({getattr(e, 'strerror', None) or e})"
    if expected is None:
        return f"no valid digest record {record.name}" if not record.exists() else (
            f"its digest record {record.name} is not a valid record")
    try:
        size, sha256 = file_digest(path)
    except (OSError, StoreCorruptError) as e:
        return f"cannot be read ({getattr(e, 'strerror', None) or e})"
    if size != expected["size"]:
        return f"is {size} bytes, its record says {expected['size']}"
    if sha256 != expected["sha256"]:
        return "sha256 differs from its digest record"
    return None


def cache_problems(root: StorePath) -> list[str]:
    """One line per cached table in `root/derived/` whose digest record is missing, unreadable or
    disagrees with it (such a table is recomputed when next used, never served). Empty when
    every cached table is vouched for, or there is no derived/ at all."""
    folder = _as_path(root) / DERIVED
    try:
        files = [p for p in children(folder, CACHED_GLOB) if p.is_file()]
    except OSError:
        return []
    out = []
    for p in files:
        why = check_file(p)
        if why is not None:
            out.append(f"cached table {DERIVED}/{p.name}: {why} (it is recomputed on next use)")
    return out


def _read_record(record: StorePath) -> dict[str, object] | None:
    """The record's {"sha256", "size"}, or None if it is absent or malformed."""
    raw = read_file(record)
    if raw is None:
        return None
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if (not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str)
            or not isinstance(rec.get("size"), int) or isinstance(rec.get("size"), bool)):
        return None
    return {"sha256": rec["sha256"], "size": rec["size"]}




def _as_path(path: StorePath | str) -> StorePath:
    return path if isinstance(path, RemotePath) else Path(path)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
