"""A read-only Zarr store that checks every document and chunk it hands to Zarr against the ledger.

Zarr alone reads a missing chunk as its fill value (zeros) and trusts whatever zarr.json says
(codecs, fill value, shape). Through `CheckedStore` a recorded file that is absent, or whose
size or checksum differs from its record, raises StoreCorruptError instead. Array chunks are
tied to their record by size and crc32c tail (Zarr checks the tail against the rest of the
chunk), so no chunk is hashed on the read path; metadata documents are checked by sha256.
A remote store (store/fs.py) reads through `CheckedRemoteStore`, the same checks over Zarr's
FsspecStore; `checked_store` picks the one for the ledger's root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.abc.store import Store as ZarrStore
from zarr.storage import LocalStore

from actstore.errors import StoreCorruptError
from actstore.store.fs import GuardedFsspecStore, RemotePath, zarr_store
from actstore.store.integrity import Ledger


def checked_store(ledger: Ledger, prefix: str) -> ZarrStore:
    """A read-only Zarr store over `ledger.root / prefix` whose every read is checked against `ledger`."""
    if isinstance(ledger.root, RemotePath):
        return CheckedRemoteStore(ledger, prefix)
    return CheckedStore(ledger, prefix)


class CheckedStore(LocalStore):
    """LocalStore over `root / prefix`, read-only, whose reads are checked against `ledger`."""

    def __init__(self, ledger: Ledger, prefix: str) -> None:
        root = ledger.root
        if isinstance(root, RemotePath):
            raise TypeError(f"{root} is remote: open it through checked_store")
        self.root_path = root
        super().__init__(root / prefix, read_only=True)
        self.ledger = ledger
        self.prefix = prefix

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        rel = f"{self.prefix}/{key}"
        _refuse_special(self.root_path / rel)  # a FIFO would block Zarr's reader forever
        buf = await super().get(key, prototype, None)  # whole files only: a partial read cannot be checked
        what = "metadata" if key.endswith("zarr.json") else "weight" if self.prefix == "params" else "chunk"
        data = None if buf is None else buf.as_numpy_array().data
        self.ledger.check_bytes(rel, data, what)  # a length and 4 bytes, or the sha256 of a small zarr.json
        if buf is not None and byte_range is not None:
            return await super().get(key, prototype, byte_range)
        return buf

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CheckedStore) and other.ledger is self.ledger and other.prefix == self.prefix

    __hash__ = object.__hash__


class CheckedRemoteStore(GuardedFsspecStore):
    """FsspecStore over `root / prefix` of a remote store, read-only, whose reads are checked against `ledger`."""

    def __init__(self, ledger: Ledger, prefix: str) -> None:
        if not isinstance(ledger.root, RemotePath):
            raise TypeError(f"{ledger.root} is local: open it through checked_store")
        inner = zarr_store(ledger.root / prefix, read_only=True)
        super().__init__(fs=inner.fs, path=inner.path, read_only=True)
        self.ledger = ledger
        self.prefix = prefix

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if prototype is None:
            from zarr.core.buffer import default_buffer_prototype  # noqa: PLC0415

            prototype = default_buffer_prototype()
        buf = await super().get(key, prototype, None)  # whole objects only: a partial read cannot be checked
        what = "metadata" if key.endswith("zarr.json") else "weight" if self.prefix == "params" else "chunk"
        data = None if buf is None else buf.as_numpy_array().data
        self.ledger.check_bytes(f"{self.prefix}/{key}", data, what)
        if buf is not None and byte_range is not None:
            return await super().get(key, prototype, byte_range)
        return buf

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CheckedRemoteStore) and other.ledger is self.ledger and other.prefix == self.prefix

    __hash__ = object.__hash__


def _refuse_special(path: Path) -> None:
    """StoreCorruptError if something other than a regular file or a directory sits at `path`."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # absent (or unreadable): the read reports it
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise StoreCorruptError(f"{path} is not a regular file where a store file belongs; run `actstore verify`")
