"""`store.to_xarray()`: the stored activations as a lazy, Dask-backed xarray Dataset.

For the xarray / Pangeo way of working: every hook is a DataArray with its stored axis names
(`example`, `pos`, `head`, `d_head`, ...); the `example` axis carries `example_id` as its index
and the examples' scalar label columns (carry_2, template, length, ...) as further coordinates, so
`ds["blocks.0.attn.hook_z"].where(ds.carry_2, drop=True).mean("example")` works. Only committed
examples are in it, one Dask chunk per store chunk, and every block is read through
`Store.read` (checked against the commit records), never from the Zarr arrays directly.

Pickled for a distributed scheduler, an array reopens the store from its path or URL.
xarray is optional: `pip install 'actstore[xarray]'`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError, StoreCorruptError, XarrayExtraError
from actstore.store.reader import Store

XARRAY_EXTRA = "pip install 'actstore[xarray]'"
_OPEN: dict[str, Store] = {}  # stores reopened in this process (on a Dask worker), by address


def to_xarray(store: Store, hooks: Sequence[str] | None = None) -> Any:
    """A lazy xarray.Dataset of `hooks` (default: every stored hook) over the committed examples."""
    try:
        import dask.array as da  # noqa: PLC0415 (optional: the xarray extra)
        import xarray as xr  # noqa: PLC0415
    except ImportError as e:
        raise XarrayExtraError(f"store.to_xarray() needs xarray and dask ({e.name} is not installed): "
                               f"{XARRAY_EXTRA}") from None
    names = list(store.hooks) if hooks is None else list(hooks)
    if isinstance(hooks, str) or not names:
        raise InvalidParameterError(f"to_xarray hooks={hooks!r}: give a list of stored hook names (or None for all)")
    variables = {}
    for name in names:
        info = store.hook_info(name)  # UnknownHookError naming the closest stored hooks
        dims = tuple(info.dims)
        if dims[0] != "example":
            raise StoreCorruptError(f"{store.path}: hook {name} has axes {dims}, not [example, ...]; run "
                                    "`actstore verify`")
        source = HookArray(store, name)
        sizes = [stop - start for start, stop in store.chunks()] or [0]
        chunks = (tuple(sizes), *((s,) for s in source.shape[1:]))
        array = da.from_array(source, chunks=chunks, lock=False, asarray=False, fancy=False,
                              meta=np.empty((0,) * source.ndim, dtype=source.dtype), name=f"actstore-{name}-"
                              f"{_token(store)}")
        variables[name] = xr.Variable(dims, array)
    return xr.Dataset(variables, coords=example_coords(store)).set_xindex("example_id")  # ds.sel(example_id=...)


def example_coords(store: Store) -> dict[str, tuple[str, np.ndarray]]:
    """example_id (the index of the `example` axis) and every scalar column of the examples table."""
    examples = store.examples
    coords = {"example_id": ("example", examples.get_column("example_id").to_numpy())}
    for name, dtype in examples.schema.items():
        if name == "example_id" or dtype.is_nested() or dtype == pl.Object:
            continue
        column = examples.get_column(name)
        values = column.to_numpy() if dtype != pl.String and not isinstance(dtype, (pl.Categorical, pl.Enum)) \
            else np.asarray(column.cast(pl.String).to_list(), dtype=object)
        coords[name] = ("example", values)
    return coords


class HookArray:
    """An array-like over one hook's committed rows: slicing reads them through `Store.read`."""

    def __init__(self, store: Store, name: str) -> None:
        info = store.hook_info(name)
        self.store, self.name = store, name
        self.shape = (store.n_examples, *info.shape[1:])
        self.dtype = np.dtype(info.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = np.arange(self.shape[0])[key[0]]
        rest = (slice(None), *key[1:])
        if np.ndim(rows) == 0:  # one example: its axis goes, as numpy indexing drops it
            return self.store.read(self.name, int(rows), int(rows) + 1)[rest][0]
        if rows.size == 0:
            return np.zeros((0, *self.shape[1:]), dtype=self.dtype)[rest]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        block = self.store.read(self.name, lo, hi)
        if rows.size != hi - lo or (rows[0] != lo) or not (np.diff(rows) == 1).all():
            block = block[rows - lo]
        return block[rest]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _reopen, (_address(self.store), self.name, self.shape[0])


def _reopen(address: Any, name: str, n_examples: int) -> HookArray:
    store = _OPEN.get(str(address))
    if store is None or store.n_examples < n_examples:
        from actstore.store.open import open_store  # noqa: PLC0415 (open.py imports this package's reader)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            store = _OPEN[str(address)] = open_store(address)
    if store.n_examples < n_examples:
        raise StoreCorruptError(f"store {address} holds {store.n_examples} committed examples here, fewer than the "
                                f"{n_examples} of the Dataset; rerun")
    out = HookArray(store, name)
    out.shape = (n_examples, *out.shape[1:])
    return out


def _address(store: Store) -> Any:
    return store.path  # a Path, or a RemotePath that pickles with its storage options


def _token(store: Store) -> str:
    raw = f"{_address(store)}|{store.n_examples}|{store.manifest.identity()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


__all__ = ["HookArray", "XARRAY_EXTRA", "example_coords", "to_xarray"]
