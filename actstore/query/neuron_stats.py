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

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError, UnknownColumnError
from actstore.query.directions import DirectionSpec
from actstore.query.executor import Job, run
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
        self.merge(Comoments.of(x, y))

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> "Comoments":
        """The moments of one batch of rows (x: [row, d]; y: [row], rows with NaN y dropped)."""
        ok = np.isfinite(y)
        x, y = x[ok].astype(np.float64), y[ok].astype(np.float64)
        out = cls(x.shape[1])
        if y.size == 0:
            return out
        out.n, out.mx, out.my = y.size, x.mean(axis=0), float(y.mean())
        dx, dy = x - out.mx, y - out.my
        out.m2x, out.m2y, out.cxy = (dx * dx).sum(axis=0), float(dy @ dy), dy @ dx
        return out

    def merge(self, other: "Comoments") -> None:
        """Fold in the moments of other rows (Chan et al.'s pairwise update)."""
        nb = other.n
        if nb == 0:
            return
        n = self.n + nb
        deltax, deltay = other.mx - self.mx, other.my - self.my
        f = self.n * nb / n
        self.m2x = self.m2x + other.m2x + deltax * deltax * f
        self.m2y += other.m2y + deltay * deltay * f
        self.cxy = self.cxy + other.cxy + deltax * deltay * f
        self.mx = self.mx + deltax * nb / n
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
                       where: pl.Expr | Mapping[str, Any] | None = None, client: Any = None) -> pl.DataFrame:
    """Pearson r between each neuron's `value` and the numeric example label `label`.

    Rows are the neuron query's rows (same layers/pos/direction/through_head parameters as
    `neurons`); examples whose label is null are left out. Returns layer, neuron, r, n.
    client: a dask.distributed Client to run the chunks on (the same table, bit for bit).
    """
    options = dict(direction=direction, through_head=through_head, pos=pos, answer=answer, final_ln=final_ln,
                   attention_weighted=attention_weighted, where=where)
    plans = [CorrelationPlan(store, layer, options, label, value) for layer in mlp_layers(store, layers, through_head)]
    frames = []
    for plan in plans:
        moments: Comoments | None = None
        for part in run(Job(correlation_plan, plan.params), store, client, plan):
            if moments is None:
                moments = part
            else:
                moments.merge(part)
        frames.append(_frame(plan.layer, moments))
    return pl.concat(frames) if len(frames) > 1 else frames[0]


def correlation_plan(store: Store, layer: int, options: Mapping[str, Any], label: str,
                     value: NeuronValue) -> "CorrelationPlan":
    """The executor's entry point (executor.Job): one layer of a neuron correlation on `store`."""
    return CorrelationPlan(store, layer, options, label, value)


class CorrelationPlan:
    """One MLP layer of neuron_correlation; partials: a Comoments per chunk."""

    def __init__(self, store: Store, layer: int, options: Mapping[str, Any], label: str, value: NeuronValue) -> None:
        if value not in NEURON_VALUES:
            raise InvalidParameterError(f"value must be one of {', '.join(NEURON_VALUES)}, got {value!r}")
        try:  # only the label's column, part by part: never the whole examples table
            examples = store.meta_table("examples", [label])
            check_labels(examples, [label], "neuron_correlation label")
        except UnknownColumnError:
            check_labels(store.examples, [label], "neuron_correlation label")  # its message, naming the labels
            raise
        dtype = examples.schema[label]
        if not (dtype.is_numeric() or dtype == pl.Boolean):
            raise InvalidParameterError(f"neuron_correlation: label {label!r} is {dtype}, not numeric")
        self.params = dict(layer=layer, options=dict(options), label=label, value=value)
        self.layer, self.value = layer, value
        self.y = examples.get_column(label).cast(pl.Float64).fill_null(np.nan).to_numpy()
        self.plan = NeuronPlan.build(store, layer, **options)

    def ranges(self) -> list[tuple[int, int]]:
        return self.plan.ranges()

    def partials(self, ranges: Sequence[tuple[int, int]]) -> Iterator[Comoments]:
        for rows in self.plan.stream(ranges):
            x = rows.activation if self.value == "activation" else rows.projection
            yield Comoments.of(x, self.y[rows.example_id])


def _frame(layer: int, moments: Comoments | None) -> pl.DataFrame:
    if moments is None:
        return pl.DataFrame(schema=CORRELATION_SCHEMA)
    d = moments.mx.size
    return pl.DataFrame({"layer": np.full(d, layer, dtype=np.int64), "neuron": np.arange(d, dtype=np.int64),
                         "r": moments.r(), "n": np.full(d, moments.n, dtype=np.int64)}, schema=CORRELATION_SCHEMA)
