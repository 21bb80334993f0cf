"""Streaming reductions of neuron values: top-k rows per neuron, and Pearson r with a label.

Both keep a fixed amount of state per neuron and merge one chunk of rows at a time, so they run
over a store of any size in bounded memory:

- `TopK`: the k rows with the largest (or smallest) value per neuron; ties go to the earlier
  row (smaller example_id, then position), as a stable sort over all rows would give.
- `Comoments`: n, means, sums of squared deviations and the co-moment per neuron, merged with
  Chan et al.'s pairwise update, so r does not suffer from the cancellation of raw sums.
- `neuron_correlation(store, layer, label, value=...)`: r per neuron between a neuron value
  (activation or projection) and a numeric label, e.g. the brackets `open_proportion`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.directions import DirectionSpec
from actstore.query.neurons import NeuronPlan, mlp_layers
from actstore.query.selectors import Selector, check_labels
from actstore.query.tables import ColumnType
from actstore.store.reader import Store
from actstore.query.options import NEURON_VALUES, NeuronValue

CORRELATION_SCHEMA: dict[str, ColumnType] = {"layer": pl.Int64, "neuron": pl.Int64, "r": pl.Float64, "n": pl.Int64}


class Comoments:
    """Running per-neuron moments of (x, y) pairs for Pearson r."""

    def __init__(self, d: int) -> None:
        self.n = 0
        self.mx = np.zeros(d)
        self.my = 0.0
        self.m2x = np.zeros(d)
        self.m2y = 0.0
        self.cxy = np.zeros(d)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """x: [row, d] neuron values; y: [row] label values (rows with NaN y dropped)."""
        ok = np.isfinite(y)
        x, y = x[ok].astype(np.float64), y[ok].astype(np.float64)
        nb = y.size
        if nb == 0:
            return
        mxb, myb = x.mean(axis=0), y.mean()
        dx, dy = x - mxb, y - myb
        m2xb, m2yb, cxyb = (dx * dx).sum(axis=0), float(dy @ dy), dy @ dx
        n = self.n + nb
        deltax, deltay = mxb - self.mx, myb - self.my
        f = self.n * nb / n
        self.m2x += m2xb + deltax * deltax * f
        self.m2y += m2yb + deltay * deltay * f
        self.cxy += cxyb + deltax * deltay * f
        self.mx += deltax * nb / n
        self.my += deltay * nb / n
        self.n = n

    def r(self) -> np.ndarray:
        """[d] Pearson r (NaN where a variance is 0 or n < 2)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = np.sqrt(self.m2x * self.m2y)
            return np.where(denom > 0, self.cxy / np.where(denom > 0, denom, 1.0), np.nan)


def neuron_correlation(store: Store, layers: int | Sequence[int] | None, label: str, value: NeuronValue = "activation",
                       direction: DirectionSpec = "answer", through_head: Any = None, pos: Selector = None, *,
                       answer: int = 0, final_ln: bool | None = None, attention_weighted: bool = False,
                       where: pl.Expr | Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Pearson r between each neuron's `value` and the numeric example label `label`.

    Rows are the neuron query's rows (same layers/pos/direction/through_head parameters as
    `neurons`); examples whose label is null are left out. Returns layer, neuron, r, n.
    """
    if value not in NEURON_VALUES:
        raise InvalidParameterError(f"value must be one of {', '.join(NEURON_VALUES)}, got {value!r}")
    examples = store.examples
    check_labels(examples, [label], "neuron_correlation label")
    dtype = examples.schema[label]
    if not (dtype.is_numeric() or dtype == pl.Boolean):
        raise InvalidParameterError(f"neuron_correlation: label {label!r} is {dtype}, not numeric")
    y_all = examples.get_column(label).cast(pl.Float64).fill_null(np.nan).to_numpy()
    plans = [NeuronPlan.build(store, layer, direction, through_head, pos, answer=answer, final_ln=final_ln,
                              attention_weighted=attention_weighted, where=where)
             for layer in mlp_layers(store, layers, through_head)]
    frames = [_correlation(plan, y_all, value) for plan in plans]
    return pl.concat(frames) if len(frames) > 1 else frames[0]


def _correlation(plan: NeuronPlan, y_all: np.ndarray, value: str) -> pl.DataFrame:
    layer = plan.layer
    moments: Comoments | None = None
    for rows in plan.stream():
        x = rows.activation if value == "activation" else rows.projection
        if moments is None:
            moments = Comoments(x.shape[1])
        moments.add(x, y_all[rows.example_id])
    if moments is None:
        return pl.DataFrame(schema=CORRELATION_SCHEMA)
    d = moments.mx.size
    return pl.DataFrame({"layer": np.full(d, layer, dtype=np.int64), "neuron": np.arange(d, dtype=np.int64),
                         "r": moments.r(), "n": np.full(d, moments.n, dtype=np.int64)}, schema=CORRELATION_SCHEMA)
