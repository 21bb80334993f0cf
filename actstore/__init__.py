"""actstore: run a model once over a task dataset, keep the activations, query them offline."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from actstore.errors import ActstoreError

if TYPE_CHECKING:  # what a type checker sees; at run time both are imported on first use (below)
    from actstore.ingest.run import ingest as ingest
    from actstore.store.open import open_store as open_store

__all__ = ["ActstoreError", "__version__", "ingest", "open_store"]


def __getattr__(name: str) -> Any:
    # imported on first use: `ingest` pulls in torch, and reading a store must not need it.
    # actstore.ingest is a callable module (see actstore/ingest/__init__.py): ingest(...) works.
    if name == "ingest":
        import actstore.ingest

        return actstore.ingest
    if name == "open_store":
        from actstore.store import open_store

        return open_store
    raise AttributeError(f"module 'actstore' has no attribute {name!r}")
