"""What every read is checked against: the store record, the commit records and the completion record.

```
_commits/store.json     written at creation, inside the store before it is renamed into place:
                        sha256 of the manifest (canonical JSON), of every zarr.json under acts/ and
                        params/, and [size, sha256, crc32c tail] of every weight chunk file
_commits/<chunk>.json   one per committed chunk (commits.py): [size, sha256] of each of its files and
                        the sha256 of store.json, so neither the manifest nor store.json can be
                        edited without every commit record disagreeing
_commits/complete.json  written after the last chunk's commit: the chunk count and the sha256 of
                        every commit record, so a deleted record of a finished store is an error
                        rather than an unfinished ingest
```

`Ledger.load(root, manifest)` reads and cross-checks them once when a store is opened, then
answers "what must this file be" for every array chunk, metadata document, weight and meta
part a reader touches. A store that fails a check raises StoreCorruptError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from actstore.errors import StoreCorruptError
from actstore.store.commits import (CommitRecord, atomic_write_bytes, commit_files, committed_prefix, file_digest,
                                    read_file, read_remote_files)
from actstore.store.fs import RemotePath, StorePath
from actstore.store.layout import ACTS, COMMITS, PARAMS, chunk_ranges, commit_path
from actstore.store.manifest import Manifest

STORE_RECORD = "store.json"
GROW_RECORD = "grow.json"  # the intent of a growth in progress (actstore.ingest.grow): the store is refused meanwhile
COMPLETE_RECORD = "complete.json"


def manifest_digest(manifest: Manifest) -> str:
    """sha256 of the manifest's canonical JSON (key order and whitespace do not count)."""
    text = json.dumps(manifest.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def bytes_digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_sha256(weights: Iterable[tuple[str, np.ndarray]]) -> str:
    """The manifest's `weights_sha256`: over (name, float32 C-order bytes) pairs, given in name
    order (consumed one at a time, so a big model's weights are never all held). Ingest hashes the
    model's parameters with it, verify the stored params/."""
    h = hashlib.sha256()
    for name, value in weights:
        h.update(name.encode())
        # the array's own buffer, not a copy: no 600 MB of copying with the GIL held (hashlib drops it)
        h.update(np.ascontiguousarray(value, dtype=np.float32).reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def write_store_record(root: Path, manifest: Manifest, previous: list[str] | None = None,
                       known: Mapping[str, list[Any]] | None = None) -> None:
    """Record the manifest digest and every metadata document and weight chunk under `root`; `previous`:
    the sha256 of every earlier store record of a grown store (its older commit records name one of them);
    `known`: the [size, sha256(, tail)] of weight chunks and weight zarr.json documents already hashed and
    on disk (from the weight cache), by path relative to `root`, used instead of reading them again."""
    known = known or {}
    found = {sub: _files(root, sub) for sub in (ACTS, PARAMS)}
    metadata = {rel: str(known[rel][1]) if rel in known else file_digest(root / rel)[1]
                for sub in (ACTS, PARAMS) for rel in found[sub] if rel.rsplit("/", 1)[-1] == "zarr.json"}
    tail = manifest.codec.get("checksum", "crc32c") == "crc32c"
    params = {rel: list(known[rel]) if rel in known else file_digest(root / rel, fsync=True, tail=tail)
              for rel in found[PARAMS] if rel.rsplit("/", 1)[-1] != "zarr.json"}
    record: dict[str, Any] = {"manifest_sha256": manifest_digest(manifest), "metadata": metadata, "params": params}
    if previous:
        record["previous"] = list(previous)
    (root / COMMITS).mkdir(exist_ok=True)
    atomic_write_bytes(root / COMMITS / STORE_RECORD, _dump(record))


def _files(root: Path, sub: str) -> list[str]:
    """The files under root/sub, as '/'-separated paths relative to `root`, sorted (directory entries' types, no
    stat per file)."""
    out = []
    top = os.path.join(root, sub)
    for folder, _, names in os.walk(top):
        rel = sub + folder[len(top):].replace(os.sep, "/")  # os.walk's folders all start with `top`
        out += [f"{rel}/{name}" for name in names]
    return sorted(out)


def store_records(root: StorePath, store_sha256: str) -> set[str]:
    """`store_sha256` and the digests of the store records before it (a grown store's `previous`): the store
    records that a commit record (of a chunk or an intervention sweep) may name."""
    try:
        raw = read_file(root / COMMITS / STORE_RECORD)
        previous = json.loads(raw or b"{}").get("previous", []) if raw and bytes_digest(raw) == store_sha256 else []
    except (StoreCorruptError, ValueError, AttributeError):
        previous = []
    return {store_sha256, *(str(d) for d in previous)}


def write_complete_record(root: StorePath, n_chunks: int) -> None:
    """Mark a finished ingest: every chunk committed, and the digests of their commit records."""
    records = {f"{k:05d}": file_digest(commit_path(root, k))[1] for k in range(n_chunks)}
    atomic_write_bytes(root / COMMITS / COMPLETE_RECORD, _dump({"n_chunks": n_chunks, "records": records}))


def _dump(d: dict[str, Any]) -> bytes:
    return (json.dumps(d, sort_keys=True, indent=1) + "\n").encode()


@dataclass
class Ledger:
    """The checked records of an open store: expected [size, sha256] per file, relative to the root."""

    root: StorePath
    store_sha256: str
    metadata: dict[str, str]
    params: dict[str, list[Any]]
    commits: list[CommitRecord]
    complete: bool
    files: dict[str, list[Any]] = field(default_factory=dict)  # chunk files of the committed chunks

    @classmethod
    def load(cls, root: StorePath, manifest: Manifest, problems: list[str] | None = None) -> "Ledger":
        """Read and cross-check the records.

        Raises StoreCorruptError at the first disagreement, unless `problems` is given: then each
        disagreement is appended to it (one line, as `verify` reports it) and the records that
        could be read are used.
        """
        def bad(what: str) -> None:
            if problems is None:
                raise _corrupt(root, what)
            problems.append(what)

        path = root / COMMITS / STORE_RECORD
        if (root / COMMITS / GROW_RECORD).exists():
            bad(f"its ingest was growing it ({COMMITS}/{GROW_RECORD}) when it stopped; rerun that ingest to finish")
        metadata: dict[str, str] = {}
        params: dict[str, list[Any]] = {}
        store_sha = ""
        earlier: set[str] = set()
        try:
            raw = read_file(path)
        except StoreCorruptError:
            raw = None
            bad(f"its store record {COMMITS}/{STORE_RECORD} is not a regular file")
        else:
            if raw is None:
                bad(f"its store record {COMMITS}/{STORE_RECORD} is missing")
        if raw is not None:
            try:
                rec = json.loads(raw)
                metadata = {str(k): str(v) for k, v in dict(rec["metadata"]).items()}
                params = {str(k): [int(v[0]), *(str(x) for x in v[1:3])] for k, v in dict(rec["params"]).items()}
                recorded_manifest = str(rec["manifest_sha256"])
                earlier = {str(d) for d in rec.get("previous", [])}  # store records before growths
                store_sha = bytes_digest(raw)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
                bad(f"its store record {COMMITS}/{STORE_RECORD} is unreadable ({_short(e)})")
            else:
                if recorded_manifest != manifest_digest(manifest):
                    bad("the manifest (zarr.json) was changed after the store was created")
        # the completion record is read before the commit records are counted: an ingest writes it
        # after its last commit, so a reader racing the end of an ingest never sees it with a short prefix
        complete_raw = _read_complete(root, bad)
        n = committed_prefix(root, manifest.n_chunks)
        ranges = chunk_ranges(manifest.n, manifest.chunk)
        commits, digests = [], []
        fetched = read_remote_files([commit_path(root, k) for k in range(n)]) if isinstance(root, RemotePath) else []
        for k in range(n):
            where = commit_path(root, k)
            try:
                raw_commit = fetched[k] if fetched else read_file(where)
            except StoreCorruptError:
                bad(f"commit record {COMMITS}/{k:05d}.json is not a regular file")
                break
            if raw_commit is None:  # removed since it was counted: an ingest is rewriting it
                break
            try:
                record = CommitRecord.from_json(raw_commit.decode(errors="replace"), where)
            except StoreCorruptError:
                bad(f"commit record {COMMITS}/{k:05d}.json is unreadable")
                break
            if (record.chunk, record.start, record.stop) != (k, *ranges[k]):
                bad(f"commit record {COMMITS}/{k:05d}.json describes chunk {record.chunk} "
                    f"[{record.start}, {record.stop}), not chunk {k} {list(ranges[k])}")
                break
            if store_sha and record.store != store_sha and record.store not in earlier:
                bad(f"commit record {COMMITS}/{k:05d}.json belongs to another store record "
                    "(the manifest, weights or array metadata were replaced)")
            commits.append(record)
            digests.append(bytes_digest(raw_commit))
        complete = _check_complete(complete_raw, root, manifest.n_chunks, digests, bad)
        ledger = cls(root, store_sha, metadata, params, commits, complete)
        for record in commits:
            ledger.files.update(record.files)
        return ledger

    def expected(self, rel: str) -> list[Any] | str | None:
        """[size, sha256] of a chunk, weight or part file; sha256 of a zarr.json; None if unrecorded."""
        if rel in self.files:
            return self.files[rel]
        if rel in self.params:
            return self.params[rel]
        return self.metadata.get(rel)

    def check_bytes(self, rel: str, data: bytes | memoryview | None, what: str) -> None:
        """StoreCorruptError unless `data` (None: the file is absent) is what the records say `rel` holds."""
        want = self.expected(rel)
        if want is None:
            return
        if data is None:
            raise _corrupt(self.root, f"{what} file {rel} is missing")
        if isinstance(want, str):
            ok = bytes_digest(data) == want
        elif len(want) == 3:  # a chunk ending in its crc32c: size and tail here, the rest checked by Zarr
            ok = len(data) == int(want[0]) and bytes(data[-4:]).hex() == want[2]
        else:
            ok = len(data) == int(want[0]) and bytes_digest(data) == want[1]
        if not ok:
            raise _corrupt(self.root, f"{what} file {rel} differs from its record (checksum mismatch)")


def _read_complete(root: StorePath, bad: Callable[[str], None]) -> bytes | None:
    """The completion record's bytes, None if absent."""
    try:
        return read_file(root / COMMITS / COMPLETE_RECORD)
    except StoreCorruptError:
        bad(f"its completion record {COMMITS}/{COMPLETE_RECORD} is not a regular file")
        return None


def _check_complete(raw: bytes | None, root: StorePath, n_chunks: int, digests: list[str],
                    bad: Callable[[str], None]) -> bool:
    """Whether the completion record (`raw`, read before the commit records) exists and agrees
    with the commit records' digests."""
    if raw is None:
        return False
    try:
        rec = json.loads(raw)
    except ValueError as e:
        bad(f"its completion record {COMMITS}/{COMPLETE_RECORD} is unreadable ({_short(e)})")
        return False
    if not isinstance(rec, dict) or rec.get("n_chunks") != n_chunks or not isinstance(rec.get("records"), dict):
        bad(f"its completion record {COMMITS}/{COMPLETE_RECORD} does not describe {n_chunks} chunks")
        return False
    if len(digests) < n_chunks:
        bad(f"the ingest finished, but commit record {COMMITS}/{len(digests):05d}.json is missing")
    stray = [k for k in commit_files(root) if k >= n_chunks]
    if stray:
        bad(f"commit record {COMMITS}/{stray[0]:05d}.json is beyond its {n_chunks} chunks")
    for k, digest in enumerate(digests):
        if digest != rec["records"].get(f"{k:05d}"):
            bad(f"commit record {COMMITS}/{k:05d}.json differs from the completion record")
            break
    return True


def _short(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:160]


def _corrupt(root: StorePath, what: str) -> StoreCorruptError:
    return StoreCorruptError(f"store {str(root)!r} is corrupt: {what}; run `actstore verify {root}`")


__all__ = ["Ledger", "manifest_digest", "write_store_record", "write_complete_record", "STORE_RECORD",
           "COMPLETE_RECORD"]
