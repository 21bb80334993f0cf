"""Every error actstore raises on purpose.

Each subclasses a builtin as well as `ActstoreError`, so callers can catch either, and each
message names the path, hook, column or parameter that was wrong and what to do about it.
The CLI turns any `ActstoreError` into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import importlib.util


class ActstoreError(Exception):
    """Base class of all actstore errors."""


class InvalidParameterError(ActstoreError, ValueError):
    """A task, ingest or query parameter is out of range or of the wrong kind."""


class UnknownTaskError(ActstoreError, ValueError):
    """No task of that name."""


class UnknownModelError(ActstoreError, ValueError):
    """A model spec that names no zoo model, pretrained name or checkpoint directory."""


class ModelUnavailableError(ActstoreError, OSError):
    """The model is known but its weights cannot be had here (offline, not cached)."""


class UnknownHookError(ActstoreError, ValueError):
    """A hook name the model does not have."""


class StoreNotFoundError(ActstoreError, FileNotFoundError):
    """No store at that path."""


class StoreExistsError(ActstoreError, FileExistsError):
    """A store of a different run already exists at that path."""


class StoreWriteError(ActstoreError, OSError):
    """The operating system refused to write a store (read-only or special filesystem, disk full)."""


class StoreFormatError(ActstoreError, ValueError):
    """A store whose manifest or layout this version cannot read."""


class StoreCorruptError(ActstoreError, RuntimeError):
    """A chunk, checksum or metadata part disagrees with what was committed."""


class QueryError(ActstoreError, ValueError):
    """A query that cannot run on this store (bad SQL, unknown column or view)."""


class UnknownColumnError(QueryError):
    """A column name that the table does not have."""


class StoreLockedError(StoreExistsError):
    """Another process holds the store's write lock (an ingest is writing it)."""


class RemoteStoreError(ActstoreError, OSError):
    """A remote store's server could not be reached or refused a request (endpoint, credentials, network)."""


class RemoteExtraError(ActstoreError, ImportError):
    """A store URL whose protocol needs a package this install lacks (s3:// needs s3fs: actstore[s3])."""


class IncompleteStoreWarning(UserWarning):
    """A store opened for reading holds fewer committed chunks than its ingest planned."""


class OutputWriteError(ActstoreError, OSError):
    """A file the user named (-o, a report, a dataset, training output) could not be written."""


class ClusterError(ActstoreError, ConnectionError):
    """A Dask scheduler that cannot be reached (--scheduler ADDRESS, client=)."""


class XarrayExtraError(ActstoreError, ImportError):
    """store.to_xarray() on an install without xarray (the xarray extra: actstore[xarray])."""


class ModelMismatchError(ActstoreError, ValueError):
    """A model whose weights differ from those a store was ingested with."""


# What `pip install 'actstore[models]'` adds to the reader install: the model side (models, ingest,
# interventions, the text tasks' tokenizers). Reading a store (store, query, charts, sql, report) needs none.
MODELS_EXTRA = "pip install 'actstore[models]'"
MODEL_MODULES = ("torch", "transformer_lens", "transformers", "tokenizers", "safetensors")


class ModelsExtraError(ActstoreError, ModuleNotFoundError):
    """A model-side feature on a reader-only install (torch, TransformerLens, ... are not installed)."""


def needs_models_extra(exc: BaseException) -> bool:
    """Whether `exc` says a module of the model extra is missing (the install is the reader alone)."""
    name = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    return bool(name) and str(name).partition(".")[0] in MODEL_MODULES


def require_models(feature: str, modules: tuple[str, ...] = MODEL_MODULES) -> None:
    """Raise ModelsExtraError naming the extra to install if any of `modules` is missing.

    Called where the model side is entered (actstore.models, actstore.ingest, actstore.interventions,
    the word tokenizer), so `actstore.ingest(...)` on a reader install fails with the fix, not a bare
    "No module named 'torch'". Looks the modules up without importing them.
    """
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ModelsExtraError(f"{feature} needs the model extra ({name} is not installed): {MODELS_EXTRA}",
                                   name=name)
