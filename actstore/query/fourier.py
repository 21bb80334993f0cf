"""Tables in a Fourier basis (seed 003: W_U over the digits 0..9 is a single cosine frequency).

    fourier_basis(p)                        the seed's `make_fourier_basis`: [p, p] rows const, cos 1,
                                            sin 1, ..., each of unit norm, and their names
    fourier_table(table, over, ...)         any tidy table's values along column `over` (e.g. the
                                            digit tokens of W_U, or of a DLA over every digit)
                                            projected on that basis
    spectrum_table(table, over, ...)        magnitude and phase of the real FFT along `over` (the
                                            seed's `t.fft.rfft` view)
    weight_fourier(store, spec, ids=...)    a weight (query/weights.py spec) along its token or
                                            position axis: weight_fourier(store, 'W_U', ids=range(10))
                                            is the seed's W_U[:, :10] @ fourier_basis.T

Rows of the result: the table's other key columns (`by`, default every column but `over` and the
value), then component (0..p-1), fourier ('const', 'cos 1', 'sin 1', ...), frequency, value. The
basis runs over `ids` in the order given (default: the sorted values of `over`), so ids=range(10)
puts digit 0 at phase 0. Every group must have exactly one value per id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.circuits import as_weights
from actstore.query.cosines import DIM_AXES
from actstore.query.weights import Ids, parse_spec, spec_axes, weight_matrix


def fourier_basis(p: int) -> tuple[np.ndarray, list[str]]:
    """([p, p] float64 basis, one unit-norm component per row; names 'const', 'cos 1', 'sin 1', ...)."""
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1:
        raise InvalidParameterError(f"a Fourier basis needs a positive size, got {p!r}")
    p = int(p)
    x = np.arange(p)
    rows, names = [np.ones(p)], ["const"]
    for i in range(1, (p - 1) // 2 + 1):
        rows += [np.cos(2 * np.pi * x * i / p), np.sin(2 * np.pi * x * i / p)]
        names += [f"cos {i}", f"sin {i}"]
    if p % 2 == 0 and p > 1:
        rows.append(np.cos(np.pi * x))
        names.append(f"cos {p // 2}")
    basis = np.stack(rows)
    return basis / np.linalg.norm(basis, axis=1, keepdims=True), names


def _frequency(name: str) -> int:
    return 0 if name == "const" else int(name.split()[1])


def _grid(table: pl.DataFrame, over: str, value: str, by: Sequence[str] | None,
          ids: Ids) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """(group keys [group], values [group, p] in ids order, ids)."""
    for name in (over, value):
        if name not in table.columns:
            raise InvalidParameterError(f"no column {name!r} in the table (columns: {', '.join(table.columns)})")
    keys = [c for c in table.columns if c not in (over, value)] if by is None else list(by)
    for name in keys:
        if name not in table.columns or name in (over, value):
            raise InvalidParameterError(f"by: {name!r} is not a key column of the table ({', '.join(table.columns)})")
    order = np.asarray(sorted(table.get_column(over).unique().to_list()) if ids is None else list(ids))
    if order.size < 1 or np.unique(order).size != order.size:
        raise InvalidParameterError(f"ids along {over!r} must be distinct and non-empty, got {order.tolist()[:10]}")
    df = table.filter(pl.col(over).is_in(pl.Series(order.tolist()).implode()))
    index = df.get_column(over).replace_strict(pl.Series(order.tolist()), pl.Series(range(order.size)),
                                               return_dtype=pl.Int64)
    df = df.with_columns(index.alias("__i"))
    if keys:
        grouped = df.group_by(keys, maintain_order=True).agg(pl.col("__i"), pl.col(value).cast(pl.Float64))
    else:
        grouped = df.select(pl.col("__i").implode(), pl.col(value).cast(pl.Float64).implode())
    counts = grouped.get_column("__i").list.len().to_numpy()
    n_unique = grouped.get_column("__i").list.n_unique().to_numpy()
    if grouped.height == 0 or (counts != order.size).any() or (n_unique != order.size).any():
        raise InvalidParameterError(f"every group of ({', '.join(keys) or 'the whole table'}) needs exactly one "
                                    f"{value} for each of the {order.size} ids along {over!r}; pass by= the key "
                                    "columns, or ids= the values present")
    values = np.zeros((grouped.height, order.size))
    rows = np.repeat(np.arange(grouped.height), order.size)
    values[rows, np.concatenate(grouped.get_column("__i").to_list())] = np.concatenate(
        grouped.get_column(value).to_list())
    return grouped.select(keys), values, order


def fourier_table(table: pl.DataFrame, over: str, value: str = "value", by: Sequence[str] | None = None,
                  ids: Ids = None) -> pl.DataFrame:
    """`table`'s values along `over` in the Fourier basis (see the module doc)."""
    keys, values, order = _grid(table, over, value, by, ids)
    basis, names = fourier_basis(order.size)
    coef = values @ basis.T  # [group, component]
    return _long(keys, coef, {"component": np.arange(order.size, dtype=np.int64), "fourier": names,
                              "frequency": np.array([_frequency(n) for n in names], dtype=np.int64)},
                 {"value": coef})


def spectrum_table(table: pl.DataFrame, over: str, value: str = "value", by: Sequence[str] | None = None,
                   ids: Ids = None) -> pl.DataFrame:
    """Real FFT of `table`'s values along `over`: by..., frequency, magnitude, phase (radians)."""
    keys, values, _ = _grid(table, over, value, by, ids)
    f = np.fft.rfft(values, axis=1)
    return _long(keys, f, {"frequency": np.arange(f.shape[1], dtype=np.int64)},
                 {"magnitude": np.abs(f), "phase": np.arctan2(f.imag, f.real)})


def _long(keys: pl.DataFrame, grid: np.ndarray, items: dict[str, Any], values: dict[str, np.ndarray]) -> pl.DataFrame:
    """One row per (group, item): the group's keys, the item columns, the values [group, item]."""
    g, k = grid.shape
    parts = [keys[np.repeat(np.arange(g), k)]] if keys.width else []
    parts.append(pl.DataFrame({name: np.tile(np.asarray(v), g) for name, v in items.items()}))
    parts.append(pl.DataFrame({name: v.reshape(-1).astype(np.float64) for name, v in values.items()}))
    return pl.concat(parts, how="horizontal")


def weight_fourier(source: Any, spec: str, over: str | None = None, ids: Ids = None,
                   spectrum: bool = False) -> pl.DataFrame:
    """A weight matrix (query/weights.py spec) in the Fourier basis along one axis.

    over: the axis to transform (default: the one axis that is not d_model, e.g. 'token' of W_U);
    ids: which ids along it, in order (default all); spectrum: magnitude / phase instead.
    """
    w = as_weights(source)
    parsed = parse_spec(spec, w.arch)
    axes = spec_axes(parsed)
    if over is None:
        free = [a for a in axes if a not in DIM_AXES]
        if len(free) != 1:
            raise InvalidParameterError(f"{spec}: give over= one of its axes ({', '.join(axes)}) to transform along")
        over = free[0]
    if over not in axes:
        raise InvalidParameterError(f"{spec} has axes {', '.join(axes)}; over={over!r} is not one")
    rows, cols = (ids, None) if over == axes[0] else (None, ids)
    table = weight_matrix(w, parsed, rows, cols).frame()
    order = None if ids is None else list(np.asarray(ids).ravel())
    return (spectrum_table if spectrum else fourier_table)(table, over, ids=order)
