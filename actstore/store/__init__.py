"""The on-disk store: layout, manifest, commit protocol, reading, integrity checks.

Imports neither transformer_lens nor torch: a store is read anywhere, with no model.
"""

from actstore.store.manifest import HookInfo, Manifest
from actstore.store.open import open_store, read_manifest
from actstore.store.reader import Store

__all__ = ["HookInfo", "Manifest", "Store", "open_store", "read_manifest"]
