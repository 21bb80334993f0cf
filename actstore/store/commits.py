"""The commit protocol: a chunk counts only once its commit record exists.

The writer writes a chunk's arrays and its meta parts, then (last) `_commits/<chunk>.json`
via a temporary file, fsync and `os.replace`, so the record is either absent or complete.
The record holds the chunk's example range and the size and SHA-256 of every file of the
chunk, which lets `verify` name a chunk whose bytes changed after the commit. Readers count
the committed chunks as the contiguous prefix 0, 1, 2, ... of records.

On an object store (store/fs.py) the record is one PUT, which is atomic by itself: there is no
temporary object, rename or fsync, and the record is still written after every file it names. Its
digests are of the objects as the server holds them: read back, or taken from the bytes sent where
the PUT's ETag proves the server holds exactly those (`put_digest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actstore.errors import StoreCorruptError
from actstore.store.fs import RemotePath, StorePath, children
from actstore.store.layout import COMMITS, commit_path


@dataclass(frozen=True)
class CommitRecord:
    """chunk index, its example range [start, stop), {relative file path: [bytes, sha256] or, for
    array chunks ending in crc32c, [bytes, sha256, crc32c tail]}, and the
    sha256 of the store record (integrity.py) it was committed against."""

    chunk: int
    start: int
    stop: int
    files: dict[str, list[Any]]
    store: str

    def to_json(self) -> str:
        return json.dumps({"chunk": self.chunk, "start": self.start, "stop": self.stop, "files": self.files,
                           "store": self.store}, sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: StorePath) -> "CommitRecord":
        try:
            d = json.loads(text)
            files = {str(k): [int(v[0]), *(str(x) for x in v[1:3])] for k, v in dict(d["files"]).items()}
            return cls(chunk=int(d["chunk"]), start=int(d["start"]), stop=int(d["stop"]), files=files,
                       store=str(d["store"]))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise StoreCorruptError(f"commit record {where} is unreadable ({e}); run `actstore verify`") from None


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, which must be a regular file: a directory, FIFO, socket or
    device where a store file belongs is StoreCorruptError (a FIFO would block a reader forever).
    FileNotFoundError if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise StoreCorruptError(f"{path} is a directory where a store file belongs; run `actstore verify`") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreCorruptError(f"{path} is not a regular file where a store file belongs; run `actstore verify`")
    return fd


def read_file(path: StorePath) -> bytes | None:
    """The bytes of a store file, or None if it is absent (see open_regular)."""
    if isinstance(path, RemotePath):
        return path.read_bytes_or_none()
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def file_digest(path: StorePath, fsync: bool = False, tail: bool = False) -> list[Any]:
    """[size in bytes, sha256 hex] of a file; with tail, also its last 4 bytes (hex); with fsync,
    also flush it to disk.

    The tail of a Zarr chunk whose codecs end in crc32c is that checksum of the rest of the file:
    recorded, it lets a reader tie a chunk to its record from its size and tail alone (Zarr then
    checks the rest against the tail), with no hashing on the read path.
    """
    if isinstance(path, RemotePath):  # the object as the server holds it (FileNotFoundError if absent)
        return bytes_digest_list(path.read_bytes(), tail)
    h = hashlib.sha256()
    size = 0
    last = b""
    buf = bytearray(_DIGEST_BLOCK)  # one buffer read into: no new bytes object (and its page faults) per block
    view = memoryview(buf)
    with os.fdopen(open_regular(path), "rb", buffering=0) as f:
        while k := f.readinto(buf):
            h.update(view[:k])
            size += k
            last = (last + bytes(view[max(0, k - 4):k]))[-4:]
        if fsync:
            os.fsync(f.fileno())
    return [size, h.hexdigest(), last.hex()] if tail else [size, h.hexdigest()]


_DIGEST_BLOCK = 1 << 20


def bytes_digest_list(data: bytes, tail: bool = False) -> list[Any]:
    """What file_digest says of a file holding `data`."""
    digest: list[Any] = [len(data), hashlib.sha256(data).hexdigest()]
    return [*digest, bytes(data[-4:]).hex()] if tail else digest


def put_digest(data: bytes, response: Any, tail: bool = False) -> list[Any] | None:
    """What file_digest would read back from an object just put with `data`, where the PUT's response proves
    the server holds exactly those bytes; None where it does not (then read the object back).

    The proof: S3's ETag of a single-request PUT is the MD5 of the object's bytes. A multipart upload's ETag
    ('...-N'), an encrypted object's (SSE-KMS / SSE-C: not an MD5) or a filesystem that gives no response
    proves nothing, so those are read back as before.
    """
    etag = response.get("ETag") if isinstance(response, dict) else None
    if not isinstance(etag, str) or etag.strip('"') != hashlib.md5(data, usedforsecurity=False).hexdigest():
        return None
    return bytes_digest_list(data, tail)


def atomic_write_bytes(path: StorePath, data: bytes, sync_dir: bool = True) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part.
    sync_dir=False leaves the directory's fsync to the caller (a chunk's writer fsyncs its new entries at once)."""
    if isinstance(path, RemotePath):
        path.write_bytes(data)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def new_entry_dirs(path: Path) -> list[Path]:
    """The local directories that get a new entry when `path` is created with its missing parents: its parent,
    each missing ancestor, and the existing directory the first missing one is made in. Call it before the
    write; fsync them (fsync_dir) after it, so the new names are as durable as the file's bytes."""
    dirs, d = [], path.parent
    while True:
        dirs.append(d)
        if d.exists() or d.parent == d:
            return dirs
        d = d.parent


def fsync_dir(path: StorePath) -> None:
    """Make a local directory's entries durable (a new file's fsync covers its bytes, not its name)."""
    if isinstance(path, RemotePath):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_commit(root: StorePath, record: CommitRecord) -> None:
    (root / COMMITS).mkdir(exist_ok=True)
    atomic_write_bytes(commit_path(root, record.chunk), record.to_json().encode())


def read_commit(root: StorePath, chunk: int) -> CommitRecord | None:
    """The commit record of a chunk, or None if it has none."""
    path = commit_path(root, chunk)
    raw = read_file(path)
    if raw is None:
        return None
    return CommitRecord.from_json(raw.decode(errors="replace"), path)  # damaged bytes fail as JSON, not UTF-8


def committed_prefix(root: StorePath, n_chunks: int) -> int:
    """How many chunks are committed: the length of the contiguous prefix of commit records."""
    if isinstance(root, RemotePath):  # one listing, not a request per chunk
        listed = set(commit_files(root))
        k = 0
        while k < n_chunks and k in listed:
            k += 1
        return k
    k = 0
    while k < n_chunks and commit_path(root, k).exists():
        k += 1
    return k


def read_remote_files(objects: list[StorePath]) -> list[bytes | None]:
    """The bytes of each object of a remote store (None where absent), fetched concurrently: one
    round trip's wait for many small records instead of one each."""
    paths = [p for p in objects if isinstance(p, RemotePath)]
    if len(paths) != len(objects):
        raise TypeError("read_remote_files reads objects of a remote store only")
    if not paths:
        return []
    fs = paths[0].fs
    try:
        got = fs.cat([p.path for p in paths], on_error="return")
    except FileNotFoundError:
        got = {}
    if not isinstance(got, dict):
        got = {paths[0].path: got}
    out: list[bytes | None] = []
    for p in paths:
        value = got.get(p.path)
        if isinstance(value, (bytes, bytearray)):
            out.append(bytes(value))
        elif value is None or isinstance(value, FileNotFoundError):
            out.append(None)
        else:  # another failure of that one request: read it alone, which reports it
            out.append(p.read_bytes_or_none())
    return out


def commit_files(root: StorePath) -> list[int]:
    """Chunk indices of every commit record present (for verify and cleanup)."""
    d = root / COMMITS
    if not d.is_dir():
        return []
    return sorted(int(p.stem) for p in children(d, "*.json") if p.stem.isdigit())
