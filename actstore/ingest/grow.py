"""Growing a store: `ingest --n N2` on a store of the same run with n < N2 appends examples n .. N2-1.

The first n examples of N2 are those of n (datasets are made in blocks), so the committed chunks
stay; what changes is the manifest's n, the arrays' shapes (their zarr.json), the store record
(its digests of those) and the completion record; a partial last chunk is redone at full size.
The steps, each idempotent, under the store's write lock:

1. `_commits/grow.json` (the intent): the new n, the old n, and the digests of every earlier store
   record (the old one's `previous` plus the old one). From here until step 3 readers refuse the
   store with one line: rerun the ingest;
2. remove the completion record and the partial last chunk (record first, then its files);
   rewrite every `acts/*/zarr.json` and the root `zarr.json` with the new n (byte for byte what
   Zarr writes for a store created at that n), then the store record, which lists the earlier
   records' digests in `previous`: the commit records of the old chunks name one of those, and
   readers accept them;
3. remove the intent. The ingest then writes the new chunks as a resume does.

A crash before 1 leaves the old store; between 1 and 3 a refused store that the same ingest
(the same --n) finishes on its rerun. A smaller --n than stored is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Any

from actstore.errors import StoreExistsError, StoreFormatError
from actstore.store.commits import atomic_write_bytes, file_digest, read_file
from actstore.store.integrity import COMPLETE_RECORD, GROW_RECORD, STORE_RECORD, write_store_record
from actstore.store.layout import ACTS, COMMITS, chunk_file, commit_path, meta_tables, part_path
from actstore.store.manifest import MANIFEST_KEY, Manifest

# Test hook: a PHASE makes the process SIGKILL itself after it ('intent', 'arrays', 'manifest', 'record');
# used by the growth crash tests only
KILL_ENV = "ACTSTORE_TEST_KILL_GROW"


def resized(m: Manifest, n: int) -> Manifest:
    """`m` for n examples: n and every hook's first axis."""
    hooks = tuple(dataclasses.replace(h, shape=(n, *h.shape[1:])) for h in m.hooks)
    return dataclasses.replace(m, n=n, hooks=hooks)


def growth_differences(old: Manifest, new: Manifest, auto_chunk: bool) -> list[str]:
    """Identity fields other than n that keep `new` from growing the store of `old` (with an automatic
    chunk size, the stored chunk and batch are kept)."""
    if auto_chunk:
        new = dataclasses.replace(new, chunk=old.chunk, batch=old.batch)
    return old.differences(resized(new, old.n))


def grow_store(root: Path, old: Manifest, n: int) -> Manifest:
    """Grow the store at `root` (lock held, its records checked) from `old.n` to `n`; returns the new manifest."""
    if n < old.n:
        raise StoreExistsError(
            f"{root} holds {old.n} examples of this run; --n {n} is smaller: its first {n} examples are the ones "
            f"asked for (read them from it), or ingest to another --out")
    raw = read_file(root / COMMITS / STORE_RECORD) or b""
    previous = [*json.loads(raw).get("previous", []), file_digest(root / COMMITS / STORE_RECORD)[1]]
    intent = {"n": n, "from_n": old.n, "previous": previous}
    atomic_write_bytes(root / COMMITS / GROW_RECORD, (json.dumps(intent, sort_keys=True) + "\n").encode())
    _maybe_die("intent")
    return finish_growth(root, n)


def read_intent(root: Path) -> dict[str, Any] | None:
    """The intent of an interrupted growth, None if there is none."""
    raw = read_file(root / COMMITS / GROW_RECORD)
    if raw is None:
        return None
    try:
        intent = json.loads(raw)
        return {"n": int(intent["n"]), "from_n": int(intent["from_n"]),
                "previous": [str(d) for d in intent["previous"]]}
    except (ValueError, KeyError, TypeError, OverflowError) as e:  # OverflowError: int(1e400)
        raise StoreFormatError(f"{root}/{COMMITS}/{GROW_RECORD} is unreadable ({e}); re-ingest with --overwrite") \
            from None


def finish_growth(root: Path, n: int) -> Manifest:
    """Steps 2 and 3 of a growth whose intent is recorded (again, after a crash); returns the new manifest."""
    intent = read_intent(root)
    if intent is None:
        raise StoreFormatError(f"{root} has no growth to finish")
    if intent["n"] != n:
        raise StoreExistsError(f"{root} was being grown to n={intent['n']} when its ingest stopped; rerun that "
                               f"ingest (--n {intent['n']}) to finish it first")
    m = resized(_stored_manifest(root), n)
    (root / COMMITS / COMPLETE_RECORD).unlink(missing_ok=True)
    old_n = intent["from_n"]
    if old_n % m.chunk:  # the old last chunk was partial: redo it at full size
        k = old_n // m.chunk
        commit_path(root, k).unlink(missing_ok=True)
        for h in m.hooks:
            chunk_file(root, h.name, k, len(h.shape)).unlink(missing_ok=True)
        for table in meta_tables(m):
            part_path(root, table, k).unlink(missing_ok=True)
    for h in m.hooks:
        _edit_json(root / ACTS / h.name / "zarr.json", lambda d, h=h: d.update(shape=list(h.shape)))
    _maybe_die("arrays")
    _edit_json(root / "zarr.json", lambda d: d["attributes"].update({MANIFEST_KEY: m.to_dict()}))
    _maybe_die("manifest")
    write_store_record(root, m, previous=intent["previous"])
    _maybe_die("record")
    (root / COMMITS / GROW_RECORD).unlink()
    return m


def _maybe_die(phase: str) -> None:
    if os.environ.get(KILL_ENV) == phase:
        os.kill(os.getpid(), signal.SIGKILL)


def _stored_manifest(root: Path) -> Manifest:
    """The root zarr.json's manifest as stored (the old or, after a crash, the new n)."""
    d = json.loads(read_file(root / "zarr.json") or b"{}")
    return Manifest.from_dict(d["attributes"][MANIFEST_KEY])


def _edit_json(path: Path, edit: Any) -> None:
    """Rewrite a Zarr metadata document in the form Zarr writes it (indent 2), atomically."""
    raw = read_file(path)
    if raw is None:
        raise StoreFormatError(f"{path} is missing; re-ingest with --overwrite")
    d = json.loads(raw)
    if json.dumps(d, allow_nan=True, indent=2).encode() != raw:
        raise StoreFormatError(f"{path} is not in the form this Zarr writes; re-ingest with --overwrite")
    edit(d)
    atomic_write_bytes(path, json.dumps(d, allow_nan=True, indent=2).encode())


__all__ = ["finish_growth", "grow_store", "growth_differences", "read_intent", "resized"]
