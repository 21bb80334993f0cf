"""Ingest: run a model over a task dataset and stream chosen activations into a store.

The only part of actstore (with actstore.models) that needs torch and a model.
`actstore.ingest` is both this package and the function: calling the module calls
`actstore.ingest.run.ingest` (the subpackage would otherwise shadow the function as soon as
any `actstore.ingest.*` module is imported).
"""

import sys
import types

from actstore.errors import require_models

require_models("actstore.ingest")  # a reader-only install: one error naming the extra, not 'No module torch'

from actstore.ingest.run import ingest  # noqa: E402


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return ingest(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["ingest"]
