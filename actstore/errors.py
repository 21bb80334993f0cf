"""Every error actstore raises on purpose.

Each subclasses a builtin as well as `ActstoreError`, so callers can catch either, and each
message names the path, hook, column or parameter that was wrong and what to do about it.
The CLI turns any `ActstoreError` into one line on stderr and a non-zero exit.
"""

from __future__ import annotations


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


class IncompleteStoreWarning(UserWarning):
    """A store opened for reading holds fewer committed chunks than its ingest planned."""


class OutputWriteError(ActstoreError, OSError):
    """A file the user named (-o, a report, a dataset, training output) could not be written."""


class ModelMismatchError(ActstoreError, ValueError):
    """A model whose weights differ from those a store was ingested with."""
