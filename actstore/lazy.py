"""Modules imported on first use: for a dependency that costs more to import than most commands need.

    if TYPE_CHECKING:
        import duckdb
    else:
        duckdb = lazy_module("duckdb")

`duckdb.connect(...)`, `except duckdb.Error` and `isinstance(x, duckdb.X)` import it at that
moment; a process that never touches it (one DLA from a shell) never pays for it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (imported)'}>"


def lazy_module(name: str) -> Any:
    """A stand-in for module `name` that imports it when an attribute is first read."""
    return _LazyModule(name)
