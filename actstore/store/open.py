"""`open_store(path)`: open a store anywhere (a local path or an fsspec URL), with no model and no GPU."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from actstore.errors import (IncompleteStoreWarning, StoreCorruptError, StoreFormatError,
                             StoreNotFoundError)
from actstore.store.commits import read_file
from actstore.store.fs import RemotePath, StorePath, store_path
from actstore.store.manifest import MANIFEST_KEY, Manifest
from actstore.store.reader import Store


def read_manifest(path: str | os.PathLike | RemotePath, storage_options: dict[str, Any] | None = None) -> Manifest:
    """The validated manifest of the store at `path` (a local path or an fsspec URL)."""
    path = store_path(path, "store", storage_options)
    meta = path / "zarr.json"
    raw = read_file(meta) if isinstance(meta, RemotePath) else None  # one request: is_file + read
    if raw is None and not meta.is_file():
        if not path.exists():
            raise StoreNotFoundError(f"no store at {str(path)!r} (the path does not exist)")
        raise StoreNotFoundError(f"{str(path)!r} is not an actstore store (no zarr.json); "
                                 f"create one with `actstore ingest --out {path}`")
    try:
        attrs = json.loads(raw or read_file(meta) or b"").get("attributes", {})  # read_file: a FIFO never blocks
    except (ValueError, AttributeError) as e:
        raise StoreFormatError(f"{meta} is not valid Zarr group metadata ({e})") from None
    if MANIFEST_KEY not in attrs:
        raise StoreFormatError(f"{str(path)!r} is a Zarr group but not an actstore store (no manifest)")
    return Manifest.from_dict(attrs[MANIFEST_KEY])


def utf8_path(path: str | os.PathLike | RemotePath, what: str,
              storage_options: dict[str, Any] | None = None) -> StorePath:
    """`path` as a Path, or a RemotePath for an fsspec URL (store/fs.py); InvalidParameterError if
    it is empty or not valid UTF-8 (Arrow and DuckDB, which read the store's tables, cannot open
    such a path)."""
    return store_path(path, what, storage_options)


def open_store(path: str | os.PathLike | RemotePath, storage_options: dict[str, Any] | None = None) -> Store:
    """Open the store at `path` (a local path, or an fsspec URL such as `s3://bucket/store` or
    `memory://name`, with `storage_options` for its filesystem) for reading its committed chunks.

    Raises StoreNotFoundError, StoreFormatError, or StoreCorruptError where the manifest or the
    commit records disagree with what was recorded. Warns (IncompleteStoreWarning) when the
    ingest has not committed every chunk, so results cover fewer examples than planned.
    """
    root = store_path(path, "store", storage_options)
    store = Store(root, read_manifest(root))
    if not store.ledger.complete:
        m = store.manifest
        if store.n_examples == m.n:  # every chunk committed, but not the completion record
            what = (f"store {str(store.path)!r} has all {m.n} examples committed but no completion record: its "
                    "ingest is finishing or was stopped just before the end; rerun it to finish")
        else:
            what = (f"store {str(store.path)!r} holds {store.n_examples} of {m.n} examples "
                    f"({len(store.ledger.commits)}/{m.n_chunks} chunks committed): its ingest is running or was "
                    "interrupted; results cover only the committed examples")
        warnings.warn(IncompleteStoreWarning(what), stacklevel=2)
    return store


def is_store(path: str | os.PathLike | RemotePath) -> bool:
    """Whether `path` holds an actstore store (of any format version)."""
    meta = (path if isinstance(path, RemotePath) else Path(path)) / "zarr.json"
    try:
        return MANIFEST_KEY in json.loads(read_file(meta) or b"").get("attributes", {})
    except (OSError, ValueError, AttributeError, StoreCorruptError):
        return False
