"""`Store`: a read-only view of a store's committed chunks. No model, no GPU, no transformer_lens.

This implements the store read API every query codes against:

    store.path, store.manifest, store.config, store.n_examples, store.n_answers, store.chunk_size,
    store.chunks(), store.hooks, store.hook_info(name), store.read(name, start, stop),
    store.param(name), store.param_names, store.examples, store.tokens, store.outputs, store.topk,
    store.derived_dir

A Store is a snapshot: it counts the chunks committed when it was opened (readers opened during
an ingest see committed chunks only); `refresh()` re-counts. Uncommitted rows are never returned.
`derived_dir` is not created until a query writes to it.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import zarr

from actstore.errors import InvalidParameterError, StoreCorruptError, UnknownHookError
from actstore.store.arch import Arch
from actstore.store.checked import checked_store
from actstore.store.chunk_read import ChunkLayout, read_rows
from actstore.store.fs import RemotePath, StorePath
from actstore.store.integrity import Ledger
from actstore.store.layout import (ACTS, DERIVED, META_TABLES, OPTIONAL_META_TABLES, PARAMS, as_array, chunk_ranges,
                                   meta_tables, part_path)
from actstore.store.manifest import HookInfo, Manifest
from actstore.store.parts import checked_columns, checked_part, iter_parts, read_part, read_parts


class Store:
    """Committed contents of the store at `path` (open one with `actstore.open_store`)."""

    def __init__(self, path: StorePath, manifest: Manifest, ledger: Ledger | None = None) -> None:
        self.path: StorePath = path if isinstance(path, RemotePath) else Path(path)  # RemotePath: an fsspec URL
        self.manifest = manifest
        # what every read is checked against; StoreCorruptError here if the records disagree
        self.ledger = ledger if ledger is not None else Ledger.load(self.path, manifest)
        self._n_committed_chunks = len(self.ledger.commits)
        self._arrays: dict[str, zarr.Array] = {}
        self._layouts: dict[str, ChunkLayout | None] = {}
        self._checked_parts: dict[str, list[StorePath]] = {}

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Store({str(self.path)!r}: {m.task} x {m.model_spec}, {self.n_examples}/{m.n} examples, "
                f"{len(m.hooks)} hooks, {m.dtype})")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its path (a RemotePath as its URL and storage_options): a worker reopens it."""
        return (_reopen, (self.path,))

    @property
    def url(self) -> str:
        """The store's address: its local path or its fsspec URL."""
        return str(self.path)

    def refresh(self) -> "Store":
        """A new snapshot of the same store (sees chunks committed since this one was opened, and examples a
        growth of the same run added); StoreCorruptError if another run replaced it at its path."""
        from actstore.store.open import read_manifest  # noqa: PLC0415 (open imports this module)

        manifest, n = read_manifest(self.path), self.manifest.n
        as_before = dataclasses.replace(manifest, n=n, hooks=tuple(dataclasses.replace(h, shape=(n, *h.shape[1:]))
                                                                   for h in manifest.hooks))
        if manifest.n < n or self.manifest.differences(as_before):  # a growth changes n and the hooks' shapes only
            raise StoreCorruptError(f"store {str(self.path)!r} was replaced by another run since it was opened; "
                                    "open it again")
        return Store(self.path, manifest)

    # --- shape of the store -------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """TransformerLens config fields of the model as recorded (for display; queries use `arch`)."""
        return self.manifest.model_config

    @cached_property
    def arch(self) -> Arch:
        """The model's architecture facts and hook/weight names."""
        return Arch.from_config(self.manifest.model_config)

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
    def finished(self) -> bool:
        """Whether the ingest that writes this store finished (its completion record exists)."""
        return self.ledger.complete

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
        if self.direct_reads and isinstance(self.path, Path):  # a remote store reads through Zarr
            layout = self._layout(name)
            rows = None if layout is None else read_rows(layout, self.path, f"{ACTS}/{name}", start, stop,
                                                         self.ledger.expected)
            if rows is not None:
                return rows
        try:
            return np.asarray(self._array(name)[start:stop])
        except ValueError as e:  # zarr's crc32c mismatch
            raise StoreCorruptError(f"{self.path}: array acts/{name} rows [{start}, {stop}): {e}; "
                                    f"run `actstore verify`") from None

    # decode a local store's chunks straight from their files (store/chunk_read.py), with the same
    # checks; False reads every array through Zarr (benchmarks/reads.py compares the two)
    direct_reads: bool = True

    def _layout(self, name: str) -> ChunkLayout | None:
        """How a hook's chunks are decoded directly from their files; None: through Zarr (another layout)."""
        if name not in self._layouts:  # from the array's zarr.json, checked against its record as it opened
            self._layouts[name] = ChunkLayout.of(self._array(name).metadata.to_dict())
        return self._layouts[name]

    def _array(self, name: str) -> zarr.Array:
        arr = self._arrays.get(name)
        if arr is None:  # opened once: each open reads the array's zarr.json
            arr = self._arrays[name] = as_array(self._acts_group, ACTS, name, self.path)
        return arr

    @cached_property
    def _acts_group(self) -> zarr.Group:
        return zarr.open_group(checked_store(self.ledger, ACTS), mode="r", zarr_format=3)

    # --- weights ------------------------------------------------------------------------------

    @cached_property
    def _params_group(self) -> zarr.Group:
        return zarr.open_group(checked_store(self.ledger, PARAMS), mode="r", zarr_format=3)

    @cached_property
    def param_names(self) -> list[str]:
        """TransformerLens state-dict names of the processed model's weights (as recorded at creation,
        so a deleted weight is an error on use, not a missing name)."""
        head, tail = f"{PARAMS}/", "/zarr.json"
        return sorted(rel[len(head):-len(tail)] for rel in self.ledger.metadata
                      if rel.startswith(head) and rel.endswith(tail) and rel != f"{PARAMS}{tail}")

    def param(self, name: str) -> np.ndarray:
        """A weight of the processed model, float32 (e.g. 'blocks.0.attn.W_O' [head, d_head, d_model])."""
        if name not in self.param_names:
            close = difflib.get_close_matches(name, self.param_names, n=3)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise InvalidParameterError(f"no weight {name!r} in store {self.path}{hint}")
        try:
            return np.asarray(as_array(self._params_group, PARAMS, name, self.path)[...])
        except ValueError as e:  # zarr's crc32c mismatch
            raise StoreCorruptError(f"{self.path}: weight params/{name}: {e}; run `actstore verify`") from None

    # --- meta tables --------------------------------------------------------------------------

    @cached_property
    def examples(self) -> pl.DataFrame:
        """One row per committed example: example_id, split, text, tokens, length, answers, labels."""
        return self.meta_table("examples")

    @cached_property
    def tokens(self) -> pl.DataFrame:
        """One row per (example_id, pos) of real tokens: token_id, str_token, role (null where none)."""
        return self.meta_table("tokens")

    @cached_property
    def outputs(self) -> pl.DataFrame:
        """One row per (example_id, answer_idx): the model's logits, prob, rank, loss at that answer."""
        return self.meta_table("outputs")

    @cached_property
    def topk(self) -> pl.DataFrame:
        """One row per (example_id, answer_idx, rank) of the top `manifest.top_k` output tokens at each
        answer: token_id, str_token (null where unknown), logit, prob; empty if the store keeps none."""
        return self.meta_table("topk")

    def meta_table(self, table: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """A meta table's committed rows, each part checked against its commit record as it is read (an
        optional table this store does not keep, such as topk with top_k 0: empty, with its columns).

        columns: decode only these (UnknownColumnError naming one the table lacks); not cached, so a
        query needing a few columns of a large store never holds the whole table (selected from the
        whole table instead when that is loaded already).
        """
        self._check_table(table)
        if columns is not None and table in self.__dict__:  # the cached property holds it: no reading
            loaded = self.__dict__[table]
            return loaded.select(checked_columns(loaded.schema, table, columns))
        stored = table in meta_tables(self.manifest)
        return read_parts(self.ledger, table, self._n_committed_chunks if stored else 0, columns)

    def meta_parts(self, table: str, columns: Sequence[str] | None = None) -> Iterator[pl.DataFrame]:
        """A meta table's committed parts one at a time (one per chunk, in order), each checked as it
        is read; only `columns` when given. Memory holds one part."""
        self._check_table(table)
        stored = table in meta_tables(self.manifest)
        return iter_parts(self.ledger, table, self._n_committed_chunks if stored else 0, columns)

    def meta_part(self, table: str, k: int, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Committed part k of a meta table: the rows of chunk k (`list(self.chunks())[k]`), checked as it
        is read; only `columns` when given. IndexError for a chunk that is not committed."""
        self._check_table(table)
        if not 0 <= k < self._n_committed_chunks or table not in meta_tables(self.manifest):
            raise IndexError(f"{self.path}: meta/{table} has no committed part {k}")
        return read_part(self.ledger, table, k, columns)

    def _check_table(self, table: str) -> None:
        if table not in (*META_TABLES, *OPTIONAL_META_TABLES):
            raise InvalidParameterError(f"no meta table {table!r}; meta tables: "
                                        f"{', '.join((*META_TABLES, *OPTIONAL_META_TABLES))}")

    def meta_paths(self, table: str) -> list[StorePath]:
        """The committed Parquet parts of a meta table, each checked against its commit record once
        per Store (for readers such as DuckDB that open the files themselves); none for an optional
        table this store does not keep."""
        self._check_table(table)
        if table not in meta_tables(self.manifest):
            return []
        if table not in self._checked_parts:
            for k in range(self._n_committed_chunks):
                checked_part(self.ledger, table, k)
            self._checked_parts[table] = [part_path(self.path, table, k) for k in range(self._n_committed_chunks)]
        return list(self._checked_parts[table])

    @property
    def derived_dir(self) -> StorePath:
        return self.path / DERIVED

    def sql(self, query: str, params: dict[str, dict[str, Any]] | None = None,
            attach: dict[str, Any] | None = None) -> Any:
        """DuckDB SQL over this store's views (and those of the `attach`ed stores, {alias: store or
        path}, as alias.examples, alias.dla, ...); `.pl()` / `.arrow()` / `.df()` (see actstore.query.sql)."""
        from actstore.query.sql import sql  # noqa: PLC0415 (the query layer is imported on use)

        return sql(self, query, params, attach=attach)

    def to_xarray(self, hooks: list[str] | None = None) -> Any:
        """The committed activations as a lazy Dask-backed xarray.Dataset, example labels as coordinates,
        reads checked (see actstore.store.xarray; needs the xarray extra)."""
        from actstore.store.xarray import to_xarray  # noqa: PLC0415 (xarray is optional)

        return to_xarray(self, hooks)


def _reopen(path: StorePath) -> Store:
    from actstore.store.open import read_manifest  # noqa: PLC0415 (open imports this module)

    return Store(path, read_manifest(path))


def _unknown_hook(name: str, valid: list[str]) -> UnknownHookError:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    more = " ..." if len(valid) > 8 else ""
    hint = f"closest stored: {', '.join(close)}" if close else f"stored: {', '.join(valid[:8])}{more}"
    return UnknownHookError(f"hook {name!r} is not stored in this store ({hint})")
