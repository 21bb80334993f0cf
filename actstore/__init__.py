"""actstore: run a model once over a task dataset, keep the activations, query them offline."""

from __future__ import annotations

__version__ = "0.1.0"

from actstore.errors import ActstoreError

__all__ = ["ActstoreError", "__version__"]
