"""`Store`: a read-only view of a store's committed chunks. No model, no GPU, no transformer_lens.

This implements the store read API every query codes against:

    store.path, store.manifest, store.config, store.n_examples, store.n_answers, store.chunk_size,
    store.chunks(), store.hooks, store.hook_info(name), store.read(name, start, stop),
    store.param(name), store.param_names, store.examples, store.tokens, store.outputs,
    store.derived_dir

A Store is a snapshot: it counts the chunks committed when it was opened (readers opened during
an ingest see committed chunks only); `refresh()` re-counts. Uncommitted rows are never returned.
`derived_dir` is not created until a query writes to it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import zarr
from zarr.storage import LocalStore

from actstore.errors import InvalidParameterError, StoreCorruptError, UnknownHookError
from actstore.store.commits import committed_prefix
from actstore.store.layout import ACTS, DERIVED, PARAMS, chunk_ranges
from actstore.store.manifest import HookInfo, Manifest
from actstore.store.parts import read_table


class Store:
    """Committed contents of the store at `path` (open one with `actstore.open_store`)."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._n_committed_chunks = committed_prefix(self.path, manifest.n_chunks)
        self._arrays: dict[str, zarr.Array] = {}

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Store({str(self.path)!r}: {m.task} x {m.model_spec}, {self.n_examples}/{m.n} examples, "
                f"{len(m.hooks)} hooks, {m.dtype})")

    def refresh(self) -> "Store":
        """A new snapshot of the same store (sees chunks committed since this one was opened)."""
        return Store(self.path, self.manifest)

    # --- shape of the store -------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """TransformerLens config fields of the model (n_layers, n_heads, d_model, ...)."""
        return self.manifest.model_config

    @property
    def n_examples(self) -> int:
        """Committed examples (all of `manifest.n` once the ingest finished)."""
        if self._n_committed_chunks == 0:
            return 0
        return min(self._n_committed_chunks * self.manifest.chunk, self.manifest.n)

    @property
    def complete(self) -> bool:
        return self.n_examples == self.manifest.n

    @property
    def n_answers(self) -> int:
        return self.manifest.n_answers

    @property
    def chunk_size(self) -> int:
        return self.manifest.chunk

    def chunks(self) -> Iterator[tuple[int, int]]:
        """Committed [start, stop) example ranges, in order."""
        yield from chunk_ranges(self.manifest.n, self.manifest.chunk)[: self._n_committed_chunks]

    # --- activations --------------------------------------------------------------------------

    @property
    def hooks(self) -> list[str]:
        return [h.name for h in self.manifest.hooks]

    def hook_info(self, name: str) -> HookInfo:
        """Axis names, positions, shape and dtype of a stored hook; UnknownHookError if absent."""
        info = self.manifest.hook(name)
        if info is None:
            raise _unknown_hook(name, self.hooks)
        return info

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of a hook's array, in the stored dtype: [example, ...] (see hook_info).

        stop defaults to the committed example count; rows beyond it are refused.
        """
        info = self.hook_info(name)
        n = self.n_examples
        stop = n if stop is None else stop
        for label, v in (("start", start), ("stop", stop)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise InvalidParameterError(f"read {name}: {label} must be an integer, got {v!r}")
        if not 0 <= start <= stop <= n:
            raise InvalidParameterError(
                f"read {name}: rows [{start}, {stop}) are outside the {n} committed examples of {self.path}")
        if start == stop:
            return np.zeros((0, *info.shape[1:]), dtype=info.dtype)
        try:
            return np.asarray(self._array(name)[start:stop])
        except ValueError as e:  # zarr's crc32c mismatch
            raise StoreCorruptError(f"{self.path}: array acts/{name} rows [{start}, {stop}): {e}; "
                                    f"run `actstore verify`") from None

    def _array(self, name: str) -> zarr.Array:
        arr = self._arrays.get(name)
        if arr is None:  # opened once: each open reads the array's zarr.json
            arr = self._arrays[name] = self._acts_group[name]
        return arr

    @cached_property
    def _acts_group(self) -> zarr.Group:
        return zarr.open_group(LocalStore(self.path / ACTS, read_only=True), mode="r", zarr_format=3)

    # --- weights ------------------------------------------------------------------------------

    @cached_property
    def _params_group(self) -> zarr.Group:
        return zarr.open_group(LocalStore(self.path / PARAMS, read_only=True), mode="r", zarr_format=3)

    @cached_property
    def param_names(self) -> list[str]:
        """TransformerLens state-dict names of the processed model's weights."""
        return sorted(name for name, _ in self._params_group.arrays())

    def param(self, name: str) -> np.ndarray:
        """A weight of the processed model, float32 (e.g. 'blocks.0.attn.W_O' [head, d_head, d_model])."""
        if name not in self.param_names:
            close = difflib.get_close_matches(name, self.param_names, n=3)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise InvalidParameterError(f"no weight {name!r} in store {self.path}{hint}")
        return np.asarray(self._params_group[name][...])

    # --- meta tables --------------------------------------------------------------------------

    @cached_property
    def examples(self) -> pl.DataFrame:
        """One row per committed example: example_id, split, text, tokens, length, answers, labels."""
        return read_table(self.path, "examples", self._n_committed_chunks)

    @cached_property
    def tokens(self) -> pl.DataFrame:
        """One row per (example_id, pos) of real tokens: token_id, str_token, role (null where none)."""
        return read_table(self.path, "tokens", self._n_committed_chunks)

    @cached_property
    def outputs(self) -> pl.DataFrame:
        """One row per (example_id, answer_idx): the model's logits, prob, rank, loss at that answer."""
        return read_table(self.path, "outputs", self._n_committed_chunks)

    @property
    def derived_dir(self) -> Path:
        return self.path / DERIVED

    def sql(self, query: str, params: dict[str, dict[str, Any]] | None = None) -> Any:
        """DuckDB SQL over this store's views; `.pl()` / `.arrow()` / `.df()` (see actstore.query.sql)."""
        from actstore.query.sql import sql  # noqa: PLC0415 (the query layer is imported on use)

        return sql(self, query, params)


def _unknown_hook(name: str, valid: list[str]) -> UnknownHookError:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    more = " ..." if len(valid) > 8 else ""
    hint = f"closest stored: {', '.join(close)}" if close else f"stored: {', '.join(valid[:8])}{more}"
    return UnknownHookError(f"hook {name!r} is not stored in this store ({hint})")
